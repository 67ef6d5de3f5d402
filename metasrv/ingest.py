"""Mirror a source repository into the meta repository: one commit per checkpoint, or nothing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from packaging.utils import NormalizedName
from packaging.version import InvalidVersion, Version

from metasrv import archives
from metasrv.catalog import DATA_ROOT, Catalog
from metasrv.errors import InvalidArchive, InvalidInput, MetasrvError, NotFound, SourceError
from metasrv.model import DistFile, Project, Release, SourceState
from metasrv.names import normalize_name, project_path
from metasrv.projectfile import write_project
from metasrv.simplepages import SourceFile
from metasrv.sources import (
    Fetcher,
    FetchOptions,
    FolderSource,
    IndexSource,
    make_client,
    open_source,
)
from metasrv.storage import CommitId, Storage

# Metadata that could not be fetched is retried by the next sync; other errors belong to the bytes.
FETCH_FAILED = "fetch failed: "
MAX_ARCHIVE_BYTES = archives.MAX_SDIST_BYTES
WHEELS_GIVE_METADATA = "not read: the release's wheels give its metadata"


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """How a sync talks to its source and how often it commits."""

    fetch: FetchOptions = field(default_factory=FetchOptions)
    checkpoint: int = 200
    branch: str | None = None


@dataclass(slots=True)
class SyncSummary:
    """What a sync did; ``exit_code`` is 1 when some file's metadata is an error."""

    projects: int = 0
    changed: int = 0
    removed: int = 0
    releases_added: int = 0
    files_added: int = 0
    files_changed: int = 0
    errors: int = 0
    commits: list[CommitId] = field(default_factory=list)
    requests: int = 0
    bytes_fetched: int = 0

    @property
    def exit_code(self) -> int:
        """Return 0 when everything landed, 1 when some files were recorded as errors."""
        return 1 if self.errors else 0


Progress = Callable[[int, int, SyncSummary], None]


def sync(
    storage: Storage,
    source_location: str,
    names: Sequence[str] = (),
    options: SyncOptions | None = None,
    progress: Progress | None = None,
) -> SyncSummary:
    """Mirror ``names`` (default: every project the source lists) and commit what changed."""
    return asyncio.run(_sync(storage, source_location, names, options or SyncOptions(), progress))


async def _sync(
    storage: Storage,
    source_location: str,
    names: Sequence[str],
    options: SyncOptions,
    progress: Progress | None,
) -> SyncSummary:
    if options.checkpoint < 1 or options.fetch.concurrency < 1:
        raise InvalidInput("checkpoint and concurrency must be at least 1")
    targets = [normalize_name(name) for name in names]
    branch = options.branch or storage.head_branch()
    catalog = Catalog(storage)
    summary = SyncSummary()
    async with make_client(options.fetch) as client:
        fetcher = Fetcher(client, options.fetch)
        source = open_source(source_location, fetcher)
        listed: dict[str, str | None] = {}
        if not targets:
            listed = await source.list_projects()
            targets = [NormalizedName(name) for name in sorted(listed)]
        registered = {NormalizedName(n): spelling for n, spelling in listed.items() if spelling}
        parent = storage.branch_commit(branch)
        for start in range(0, len(targets), options.checkpoint):
            batch = targets[start : start + options.checkpoint]
            projects = await asyncio.gather(
                *(
                    _sync_project(
                        source,
                        catalog,
                        parent,
                        name,
                        registered=registered,
                        summary=summary,
                        named=bool(names),
                    )
                    for name in batch
                )
            )
            changes = {
                f"{DATA_ROOT}/{project_path(project.normalized_name)}": write_project(project)
                for project in projects
                if project is not None
            }
            summary.projects += len(batch)
            parent = _commit(
                storage, branch, changes, parent=parent, summary=summary, source_url=source.url
            )
            if progress is not None:
                progress(summary.projects, len(targets), summary)
        if not names and parent is not None:
            removals = {
                f"{DATA_ROOT}/{project_path(name)}": None
                for name in catalog.list_projects(parent)
                if name not in listed
            }
            summary.removed = len(removals)
            parent = _commit(
                storage, branch, removals, parent=parent, summary=summary, source_url=source.url
            )
        summary.requests, summary.bytes_fetched = fetcher.requests, fetcher.bytes_fetched
    return summary


def _commit(
    storage: Storage,
    branch: str,
    changes: Mapping[str, bytes | None],
    *,
    parent: CommitId | None,
    summary: SyncSummary,
    source_url: str,
) -> CommitId | None:
    if not changes:
        return parent
    message = f"sync {len(changes)} project{'s' if len(changes) != 1 else ''} from {source_url}"
    commit_id = storage.commit(branch, changes, message, expected_parent=parent)
    if commit_id is None:
        return parent
    summary.commits.append(commit_id)
    return commit_id


async def _sync_project(
    source: IndexSource | FolderSource,
    catalog: Catalog,
    parent: CommitId | None,
    normalized_name: NormalizedName,
    *,
    registered: dict[NormalizedName, str],
    summary: SyncSummary,
    named: bool,
) -> Project | None:
    existing = None
    if parent is not None:
        try:
            existing = catalog.get_project(parent, normalized_name)
        except NotFound:
            existing = None
    state = existing.source_state if existing is not None else SourceState()
    if existing is not None and any(
        (f.metadata_error or "").startswith(FETCH_FAILED)
        for r in existing.releases
        for f in r.files
    ):
        state = SourceState()  # files whose fetch failed are read again even if the page is not new
    try:
        page = await source.project_page(normalized_name, state)
    except NotFound:
        if named:
            raise
        return None
    if page is None:
        return None
    known = {f.filename: f for r in existing.releases for f in r.files} if existing else {}
    files = [f for f in page.files if archives.version_of_filename(f.filename) is not None]
    wheels = [f for f in files if archives.is_wheel(f.filename)]
    read = await asyncio.gather(*(_read_file(source, f, known.get(f.filename)) for f in wheels))
    # Metadata in order: PEP 658, then wheels, then sdists; an sdist is read (often a whole
    # download) only for releases whose wheels gave none.
    covered = {Version(_version(d.filename)) for d, _, _ in read if d.metadata is not None}
    read += await asyncio.gather(
        *(
            _read_file(
                source,
                f,
                known.get(f.filename),
                skip=Version(_version(f.filename)) in covered and not f.core_metadata,
            )
            for f in files
            if not archives.is_wheel(f.filename)
        )
    )
    by_version: dict[str, list[DistFile]] = {v: [] for v in page.versions if _is_version(v)}
    newest_name: tuple[Version, str] | None = None
    for dist_file, stated_name, failed in read:
        version_text = _version(dist_file.filename)
        # Files name versions normalized; PEP 700 may spell one differently (2.0 vs 2.0.0).
        version = Version(version_text)
        version_text = next((v for v in by_version if Version(v) == version), version_text)
        by_version.setdefault(version_text, []).append(dist_file)
        if stated_name and (newest_name is None or Version(version_text) >= newest_name[0]):
            newest_name = (Version(version_text), stated_name)
        previous = known.get(dist_file.filename)
        if previous is None:
            summary.files_added += 1
        elif previous != dist_file:
            summary.files_changed += 1
        summary.errors += failed
    name = registered.get(normalized_name) or (
        newest_name[1] if newest_name and _same_project(newest_name[1], normalized_name) else None
    )
    name = name or (existing.name if existing is not None else page.name)
    releases = [Release.from_files(v, tuple(files)) for v, files in by_version.items()]
    project = Project.create(name, releases, page.state)
    if existing is not None and project == existing:
        return None
    old_versions = {r.version for r in existing.releases} if existing else set()
    summary.releases_added += sum(1 for r in project.releases if r.version not in old_versions)
    summary.changed += 1
    return project


def _version(filename: str) -> str:
    version_text = archives.version_of_filename(filename)
    assert version_text is not None
    return version_text


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def _same_project(stated: str, normalized_name: NormalizedName) -> bool:
    try:
        return normalize_name(stated) == normalized_name
    except InvalidInput:
        return False


async def _read_file(
    source: IndexSource | FolderSource,
    source_file: SourceFile,
    previous: DistFile | None,
    *,
    skip: bool = False,
) -> tuple[DistFile, str | None, bool]:
    """Return a file with its core metadata, the Name it states, and whether reading it failed.

    Metadata is reused when the file's hashes are unchanged, unless fetching it failed last time.
    """
    dist_file = DistFile(
        filename=source_file.filename,
        url=source_file.url,
        hashes=dict(source_file.hashes),
        size=source_file.size,
        upload_time=source_file.upload_time,
        requires_python=source_file.requires_python,
        yanked=source_file.yanked,
    )
    if (
        previous is not None
        and previous.hashes == dist_file.hashes
        and dist_file.hashes
        and not (previous.metadata_error or "").startswith(FETCH_FAILED)
    ):
        reused = replace(
            dist_file, metadata=previous.metadata, metadata_error=previous.metadata_error
        )
        return reused, None, False
    if skip:
        return replace(dist_file, metadata_error=WHEELS_GIVE_METADATA), None, False
    try:
        read = await _read_metadata(source, source_file)
    except SourceError as exc:
        return replace(dist_file, metadata_error=FETCH_FAILED + exc.message), None, True
    except MetasrvError as exc:
        return replace(dist_file, metadata_error=exc.message), None, True
    read_file = replace(dist_file, metadata=read.metadata, metadata_error=read.unknown_reason)
    return read_file, read.name, False


async def _read_metadata(
    source: IndexSource | FolderSource, source_file: SourceFile
) -> archives.ReadMetadata:
    if isinstance(source, FolderSource):
        return _from_whole_file(source_file, _read_local(source_file.url))
    fetcher = source.fetcher
    if source_file.core_metadata:
        response = await fetcher.get(
            source_file.url + ".metadata", max_bytes=archives.MAX_METADATA_BYTES
        )
        if response.status_code == 200:
            expected = source_file.core_metadata
            if (
                isinstance(expected, dict)
                and "sha256" in expected
                and hashlib.sha256(response.content).hexdigest() != expected["sha256"]
            ):
                raise InvalidArchive("hash mismatch: PEP 658 metadata file")
            return archives.parse_metadata(response.content)
    if archives.is_wheel(source_file.filename):
        return await _read_wheel_by_ranges(fetcher, source_file)
    head_range = {
        "range": f"bytes=0-{archives.SDIST_HEAD_BYTES - 1}",
        "accept-encoding": "identity",
    }
    response = await fetcher.get(source_file.url, head_range, max_bytes=MAX_ARCHIVE_BYTES)
    if response.status_code == 206:
        read = archives.sdist_metadata_from_head(source_file.filename, response.content)
        if read is not None:
            return read
        response = await fetcher.get(source_file.url, max_bytes=MAX_ARCHIVE_BYTES)
    _require_ok(response.status_code, source_file.url)
    return _from_whole_file(source_file, response.content)


async def _read_wheel_by_ranges(fetcher: Fetcher, source_file: SourceFile) -> archives.ReadMetadata:
    """Read a wheel's METADATA with HTTP range requests, as pip and uv do."""
    headers = {"range": f"bytes=-{archives.WHEEL_TAIL_BYTES}", "accept-encoding": "identity"}
    response = await fetcher.get(source_file.url, headers, max_bytes=MAX_ARCHIVE_BYTES)
    if response.status_code == 200:
        return _from_whole_file(source_file, response.content)
    _require_ok(response.status_code, source_file.url, expected=206)
    total = response.headers.get("content-range", "").rpartition("/")[2]
    if not total.isdigit():
        raise InvalidArchive(f"{source_file.url}: 206 without a Content-Range total")

    async def read_range(start: int, end: int) -> bytes:
        ranged = await fetcher.get(
            source_file.url,
            {"range": f"bytes={start}-{end - 1}", "accept-encoding": "identity"},
            max_bytes=end - start,
        )
        _require_ok(ranged.status_code, source_file.url, expected=206)
        if len(ranged.content) != end - start:
            raise InvalidArchive(f"{source_file.url}: range answer has the wrong length")
        return ranged.content

    return await archives.wheel_metadata(int(total), response.content, read_range)


def _from_whole_file(source_file: SourceFile, content: bytes) -> archives.ReadMetadata:
    expected = source_file.hashes.get("sha256")
    if expected is not None and hashlib.sha256(content).hexdigest() != expected:
        raise InvalidArchive("hash mismatch: the file's sha256 is not the one the index lists")
    if archives.is_wheel(source_file.filename):
        return archives.wheel_metadata_from_bytes(content)
    return archives.sdist_metadata_from_bytes(source_file.filename, content)


def _read_local(url: str) -> bytes:
    return Path(url2pathname(urlsplit(url).path)).read_bytes()


def _require_ok(status: int, url: str, expected: int = 200) -> None:
    if status != expected:
        raise SourceError(f"{url}: HTTP {status}")
