"""Sync named projects and everything they need, to a fixed point: the seed of a closed mirror."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import NormalizedName, canonicalize_name

from metasrv.errors import MetasrvError, NotFound, SourceError
from metasrv.index.archives import MAX_SDIST_BYTES, is_wheel
from metasrv.index.builds import DEFAULT_BACKEND, read_build_system, unpack_sdist
from metasrv.index.client import Fetcher, FetchOptions, make_client, open_source
from metasrv.index.sync import Progress, SyncOptions, SyncSummary, sync
from metasrv.model import DistFile, Project, Release, SourceState
from metasrv.names import normalize_name
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage

# PEP 517 / 518: an sdist that declares no build system is built with setuptools' legacy backend.
LEGACY_BUILD_REQUIRES = ("setuptools", "wheel")
LEGACY_BACKEND = DEFAULT_BACKEND


def sync_with_dependencies(
    storage: Storage,
    source_location: str,
    names: Sequence[str],
    options: SyncOptions | None = None,
    progress: Progress | None = None,
    *,
    max_files: int | None = None,
) -> SyncSummary:
    """Sync ``names``, then what their newest releases require, until nothing new is needed.

    Requirements count under every extra and every marker; an sdist-only release adds the build
    requirements its pyproject.toml declares (or setuptools and wheel when it declares none).
    With ``max_files``, a project that only paths through an extra lead to is left out
    (``left_out`` names it) when its page lists more files than that: its whole history would
    be synced for an option.
    """
    options = options or SyncOptions()
    total = SyncSummary()
    required = {normalize_name(name) for name in names}
    optional: set[NormalizedName] = set()
    done: set[NormalizedName] = set()
    needs: dict[NormalizedName, tuple[set[NormalizedName], set[NormalizedName]]] = {}
    too_big: dict[NormalizedName, int] = {}
    while batch := sorted((required | optional) - done - (too_big.keys() - required)):
        if max_files is not None:
            sizes = asyncio.run(_file_counts(source_location, batch, required, options.fetch))
            too_big |= {name: count for name, count in sizes.items() if count > max_files}
            batch = [name for name in batch if name in required or name not in too_big]
            if not batch:
                continue
        # A requirement may name a project the source does not have: no reason to stop, as a
        # named project is. The first batch is the named projects.
        unknown_ok = bool(done)
        _add(total, sync(storage, source_location, batch, options, progress, unknown_ok=unknown_ok))
        done |= set(batch)
        head = storage.branch_commit(options.branch or storage.head_branch())
        if head is None:
            break
        catalog = Catalog(storage)
        for normalized_name in batch:
            try:
                project = catalog.get_project(head, normalized_name)
            except NotFound:
                # Not on the source, or its sync failed (the summary names it then).
                if not any(f.startswith(f"{normalized_name}:") for f in total.failed_projects):
                    total.left_out.append(f"{normalized_name}: the source has no such project")
                continue
            needs[normalized_name] = asyncio.run(_needed(project, options.fetch))
        _spread(required, optional, needs)
    total.left_out += [
        f"{name}: {count} files, and only extras lead to it"
        for name, count in sorted(too_big.items())
        if name not in done
    ]
    return total


def _spread(
    required: set[NormalizedName],
    optional: set[NormalizedName],
    needs: dict[NormalizedName, tuple[set[NormalizedName], set[NormalizedName]]],
) -> None:
    """Add what the synced projects need: required only on a path of no extra from a seed."""
    while True:
        grown = {n for name in required & needs.keys() for n in needs[name][0]} - required
        if not grown:
            break
        required |= grown
    optional |= {n for needed, extras_only in needs.values() for n in needed | extras_only}


async def _file_counts(
    source_location: str,
    names: Sequence[NormalizedName],
    required: set[NormalizedName],
    fetch: FetchOptions,
) -> dict[NormalizedName, int]:
    """Return how many files the source lists for each project that only extras ask for."""
    async with make_client(fetch) as client:
        source = open_source(source_location, Fetcher(client, fetch))

        async def count(name: NormalizedName) -> tuple[NormalizedName, int]:
            try:
                page = await source.project_page(name, SourceState())
            except MetasrvError:
                return name, 0  # its sync will say what is wrong with it
            return name, 0 if page is None else len(page.files)

        counted = await asyncio.gather(*(count(n) for n in names if n not in required))
    return dict(counted)


def newest_release(project: Project) -> Release | None:
    """Return the newest release with files, preferring final releases nobody yanked."""
    candidates = [release for release in project.releases if release.files]
    final = [r for r in candidates if not r.yanked and not r.version.is_prerelease]
    unyanked = [r for r in candidates if not r.yanked]
    chosen = final or unyanked or candidates
    return chosen[-1] if chosen else None


def requirement_names(requirements: Iterable[str]) -> set[NormalizedName]:
    """Return the projects requirement strings name, whatever their extras and markers."""
    found = set()
    for text in requirements:
        try:
            found.add(canonicalize_name(Requirement(text).name))
        except InvalidRequirement:
            continue  # recorded verbatim in the data; nothing to follow
    return found


async def _needed(
    project: Project, fetch: FetchOptions
) -> tuple[set[NormalizedName], set[NormalizedName]]:
    """Return what a project's newest release needs: always, and only under some extra."""
    release = newest_release(project)
    if release is None:
        return set(), set()
    requirements = {
        requirement
        for dist_file in release.files
        if dist_file.metadata is not None
        for requirement in dist_file.metadata.requires_dist
    }
    if release.metadata is not None:
        requirements |= set(release.metadata.requires_dist)
    under_extras = {text for text in requirements if _under_extra(text)}
    needed = requirement_names(requirements - under_extras)
    sdists = [f for f in release.files if not is_wheel(f.filename)]
    if sdists and len(sdists) == len(release.files):
        needed |= requirement_names(await _build_requirements(sdists[0], fetch))
    return needed, requirement_names(under_extras) - needed


def _under_extra(text: str) -> bool:
    """Return whether a requirement applies only when some extra is asked for."""
    try:
        marker = Requirement(text).marker
    except InvalidRequirement:
        return False
    # `extra == "x" and ...`; an `or` may hold without the extra, so it counts as always needed.
    return marker is not None and "extra" in str(marker) and " or " not in str(marker)


async def _build_requirements(sdist: DistFile, fetch: FetchOptions) -> list[str]:
    """Return the build requirements an sdist declares, by downloading and unpacking it."""
    try:
        async with make_client(fetch) as client:
            response = await Fetcher(client, fetch).get(sdist.url, max_bytes=MAX_SDIST_BYTES)
        if response.status_code != 200:
            raise SourceError(f"{sdist.url}: HTTP {response.status_code}")
        expected = sdist.hashes.get("sha256")
        if expected and hashlib.sha256(response.content).hexdigest() != expected:
            raise SourceError(f"{sdist.url}: sha256 is not the one on record")
        with tempfile.TemporaryDirectory(prefix="metasrv-closure-") as folder:
            archive = Path(folder) / sdist.filename
            archive.write_bytes(response.content)
            unpacked = unpack_sdist(archive, Path(folder) / "unpacked")
            requires, backend, _ = read_build_system(unpacked)
    except MetasrvError:
        # Unreadable: what an sdist is built with by default is the best guess.
        return list(LEGACY_BUILD_REQUIRES)
    # The legacy backend builds wheels with the wheel project's bdist_wheel on older setuptools.
    return requires + list(LEGACY_BUILD_REQUIRES) if backend == LEGACY_BACKEND else requires


def _add(total: SyncSummary, part: SyncSummary) -> None:
    for summary_field in fields(SyncSummary):
        value = getattr(part, summary_field.name)
        if isinstance(value, int):
            setattr(total, summary_field.name, getattr(total, summary_field.name) + value)
        elif isinstance(value, list):
            getattr(total, summary_field.name).extend(value)
