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
from metasrv.index.client import Fetcher, FetchOptions, make_client
from metasrv.index.sync import Progress, SyncOptions, SyncSummary, sync
from metasrv.model import DistFile, Project, Release
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
) -> SyncSummary:
    """Sync ``names``, then what their newest releases require, until nothing new is needed.

    Requirements count under every extra and every marker; an sdist-only release adds the build
    requirements its pyproject.toml declares (or setuptools and wheel when it declares none).
    """
    options = options or SyncOptions()
    total = SyncSummary()
    wanted = {normalize_name(name) for name in names}
    done: set[NormalizedName] = set()
    while wanted - done:
        batch = sorted(wanted - done)
        _add(total, sync(storage, source_location, batch, options, progress))
        done |= set(batch)
        head = storage.branch_commit(options.branch or storage.head_branch())
        if head is None:
            break
        catalog = Catalog(storage)
        for normalized_name in batch:
            try:
                project = catalog.get_project(head, normalized_name)
            except NotFound:
                continue  # not on the source, or recorded as failed: the summary says so
            wanted |= asyncio.run(_needed(project, options.fetch))
    return total


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


async def _needed(project: Project, fetch: FetchOptions) -> set[NormalizedName]:
    release = newest_release(project)
    if release is None:
        return set()
    requirements = [
        requirement
        for dist_file in release.files
        if dist_file.metadata is not None
        for requirement in dist_file.metadata.requires_dist
    ]
    if release.metadata is not None:
        requirements += release.metadata.requires_dist
    needed = requirement_names(requirements)
    sdists = [f for f in release.files if not is_wheel(f.filename)]
    if sdists and len(sdists) == len(release.files):
        needed |= requirement_names(await _build_requirements(sdists[0], fetch))
    return needed


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
