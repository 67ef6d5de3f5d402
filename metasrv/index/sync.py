"""Mirror a source repository into the meta repository: one commit per checkpoint, or nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from packaging.utils import NormalizedName
from packaging.version import Version

from metasrv.errors import InvalidData, InvalidInput, MetasrvError, NotFound
from metasrv.index import archives
from metasrv.index.client import (
    Fetcher,
    FetchOptions,
    FolderSource,
    IndexSource,
    make_client,
    open_source,
)
from metasrv.index.pagefiles import READ_AGAIN, read_page_files, version_of
from metasrv.index.pages import ProjectPage
from metasrv.model import DistFile, Project, Release, SourceState
from metasrv.names import normalize_name, parse_version, project_path
from metasrv.repo.catalog import DATA_ROOT, Catalog
from metasrv.repo.projectfile import read_project, write_project
from metasrv.repo.storage import CommitId, Storage


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """How a sync talks to its source and how often it commits."""

    fetch: FetchOptions = field(default_factory=FetchOptions)
    checkpoint: int = 200
    branch: str | None = None
    # False: ask for every page whole, so that what a 304 would keep (a PEP 658 hash an older
    # metasrv did not record) is read from it again; unchanged files are still not read.
    conditional: bool = True


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
    failed_projects: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # not followed (sync --max-files)

    @property
    def exit_code(self) -> int:
        """Return 0 when everything landed, 1 when files or projects were recorded as errors."""
        return 1 if self.errors or self.failed_projects or self.skipped_files else 0


Progress = Callable[[int, int, SyncSummary], None]
REMOVALS_NAMED = 100  # a removal commit names the removed projects, up to this many


@dataclass(frozen=True, slots=True)
class Plan:
    """Which projects one sync asks the source for, and what the source's root said of them."""

    targets: Sequence[NormalizedName]
    spellings: Mapping[str, str] = field(default_factory=dict)
    serials: Mapping[NormalizedName, int | None] = field(default_factory=dict)
    removals: Sequence[NormalizedName] = ()
    named: bool = False
    root_spells_names: bool = False  # a folder source registers no spellings


def sync(
    storage: Storage,
    source_location: str,
    names: Sequence[str],
    options: SyncOptions | None = None,
    progress: Progress | None = None,
    *,
    unknown_ok: bool = False,
) -> SyncSummary:
    """Mirror the projects ``names`` and commit what changed (the whole index: ``sync_all``).

    A name the source does not know is a NotFound, unless ``unknown_ok``: then it is passed over.
    """
    if not names:
        raise InvalidInput("name the projects to sync, or sync the whole index with --all")
    return asyncio.run(
        _sync(
            storage,
            source_location,
            names,
            options or SyncOptions(),
            progress,
            unknown_ok=unknown_ok,
        )
    )


async def _sync(
    storage: Storage,
    source_location: str,
    names: Sequence[str],
    options: SyncOptions,
    progress: Progress | None,
    *,
    unknown_ok: bool,
) -> SyncSummary:
    check_options(options)
    plan = Plan(targets=[normalize_name(name) for name in names], named=not unknown_ok)
    summary = SyncSummary()
    async with make_client(options.fetch) as client:
        fetcher = Fetcher(client, options.fetch)
        source = open_source(source_location, fetcher)
        await run_plan(storage, source, plan, options, summary, progress=progress)
        summary.requests, summary.bytes_fetched = fetcher.requests, fetcher.bytes_fetched
    return summary


def check_options(options: SyncOptions) -> None:
    """Reject a checkpoint or concurrency below one, negative retries, a timeout not above 0."""
    if options.checkpoint < 1 or options.fetch.concurrency < 1:
        raise InvalidInput("checkpoint and concurrency must be at least 1")
    if options.fetch.retries < 0:
        raise InvalidInput("--retries must be 0 or more")
    if options.fetch.timeout_seconds <= 0:
        raise InvalidInput("--timeout must be positive")


async def run_plan(
    storage: Storage,
    source: IndexSource | FolderSource,
    plan: Plan,
    options: SyncOptions,
    summary: SyncSummary,
    *,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
) -> bool:
    """Sync a plan a checkpoint at a time, removals in the last; False when ``stop`` ended it."""
    branch = options.branch or storage.head_branch()
    run = _Run(source, Catalog(storage), summary, plan.named, options.conditional)
    # A writer killed between moving the branch and updating the checkout is finished first.
    storage.recover()
    parent = base_commit(storage, branch)
    targets = list(plan.targets)
    starts = range(0, len(targets), options.checkpoint) if targets else range(1)
    for start in starts:
        batch = targets[start : start + options.checkpoint]
        projects = await asyncio.gather(
            *(
                _recorded(
                    run,
                    name,
                    _sync_project(
                        run,
                        parent,
                        name,
                        listed_serial=plan.serials.get(name),
                        listed_name=plan.spellings.get(name, name)
                        if plan.root_spells_names
                        else None,
                    ),
                )
                for name in batch
            )
        )
        changes: dict[str, bytes | None] = {
            f"{DATA_ROOT}/{project_path(project.normalized_name)}": write_project(project)
            for project in projects
            if project is not None
        }
        last = start + options.checkpoint >= len(targets)
        removals = plan.removals if last else ()
        changes.update({f"{DATA_ROOT}/{project_path(name)}": None for name in removals})
        summary.projects += len(batch)
        summary.removed += len(removals)
        message = _message(len(changes) - len(removals), removals, source.url)
        changes.update(run.documents)
        run.documents.clear()
        parent = _commit(storage, branch, changes, parent, summary=summary, message=message)
        if progress is not None:
            progress(summary.projects, len(targets), summary)
        if not last and stop is not None and stop():
            return False
    return True


def _message(changed: int, removals: Sequence[str], source_url: str) -> str:
    message = f"sync {changed} project{'s' if changed != 1 else ''} from {source_url}"
    if not removals:
        return message
    named = "\n".join(removals[:REMOVALS_NAMED])
    more = f"\n... and {len(removals) - REMOVALS_NAMED} more" * (len(removals) > REMOVALS_NAMED)
    return (
        f"{message}; remove {len(removals)} it no longer lists\n\n"
        f"Removed, as the source no longer lists them (earlier commits keep them):\n{named}{more}"
    )


def base_commit(storage: Storage, branch: str) -> CommitId | None:
    """Return a branch's commit or, for a branch not made yet, HEAD's, where it will start."""
    # A pull-through branch starts at HEAD's commit: an orphan would lack metasrv.toml and
    # every project, so its first sync would fetch the whole index again.
    return storage.branch_commit(branch) or storage.branch_commit(storage.head_branch())


def _commit(
    storage: Storage,
    branch: str,
    changes: Mapping[str, bytes | None],
    parent: CommitId | None,
    *,
    summary: SyncSummary,
    message: str,
) -> CommitId | None:
    if not changes:
        return parent
    # Another writer may have moved the branch meanwhile (an `understanding add`, another sync):
    # the changes are re-applied on its head, and a path both wrote keeps these newer bytes.
    commit_id = storage.commit(branch, changes, message, start_point=base_commit(storage, branch))
    if commit_id is None:
        return storage.branch_commit(branch)
    summary.commits.append(commit_id)
    return commit_id


@dataclass(frozen=True, slots=True)
class _Run:
    """What every project of one sync shares."""

    source: IndexSource | FolderSource
    catalog: Catalog
    summary: SyncSummary
    named: bool
    conditional: bool
    # Metadata documents read this checkpoint, by path, committed with the projects (PEP 658).
    documents: dict[str, bytes] = field(default_factory=dict)


async def _recorded(
    run: _Run, normalized_name: NormalizedName, syncing: Awaitable[Project | None]
) -> Project | None:
    """Return a project's new state, or None; its failure is recorded and its file kept as is."""
    try:
        project = await syncing
        if project is not None:
            # What is committed must be what the server can read back: checked, not assumed.
            read_project(write_project(project), f"{normalized_name} as synced")
    except NotFound:
        if run.named:
            raise
        return None
    except MetasrvError as exc:
        # One project the source serves badly must not stop a mirror of thousands: its file
        # keeps its last good state, the summary names it, and the exit status is 1.
        run.summary.failed_projects.append(f"{normalized_name}: {exc.message}")
        return None
    return project


async def _sync_project(
    run: _Run,
    parent: CommitId | None,
    normalized_name: NormalizedName,
    *,
    listed_serial: int | None,
    listed_name: str | None,
) -> Project | None:
    source, summary = run.source, run.summary
    existing, state = _existing(run.catalog, parent, normalized_name)
    page = await source.project_page(normalized_name, state if run.conditional else SourceState())
    if page is None:
        return _with_serial(existing, listed_serial)
    if page.state.serial is None and listed_serial is not None:
        page = replace(page, state=replace(page.state, serial=listed_serial))
    known = {f.filename: f for r in existing.releases for f in r.files} if existing else {}
    read = await read_page_files(source, page, known, run.documents)
    summary.skipped_files += [
        f"{page.name}: {f.filename[:120]!r} is no valid wheel or sdist file name"
        for f in page.files
        if archives.version_of_filename(f.filename) is None
        and f.filename.endswith((".whl", ".tar.gz", ".zip"))
    ]
    return assemble_project(
        normalized_name, page, read, existing, registered=listed_name, summary=summary
    )


def assemble_project(
    normalized_name: NormalizedName,
    page: ProjectPage,
    read: list[tuple[DistFile, str | None, bool]],
    existing: Project | None,
    *,
    registered: str | None,
    summary: SyncSummary,
) -> Project | None:
    """Return the project a page and its files' metadata make, or None when nothing changed."""
    known = {f.filename: f for r in existing.releases for f in r.files} if existing else {}
    # One release per PEP 440 version, spelled as the index first lists it: files name versions
    # normalized, and old PyPI releases may spell one version twice ("0.12.01" and "0.12.1").
    by_version: dict[Version, tuple[str, list[DistFile]]] = {}
    for text in page.versions:
        if _is_version(text):
            by_version.setdefault(Version(text), (text, []))
    # numpy lists ~20 files per version: each version is parsed, hashed and compared once.
    parsed: dict[str, Version] = {}
    newest_name: tuple[Version, str] | None = None
    for dist_file, stated_name, failed in read:
        version_text = version_of(dist_file.filename)
        version = parsed.get(version_text)
        if version is None:
            version = parsed[version_text] = Version(version_text)
        by_version.setdefault(version, (version_text, []))[1].append(dist_file)
        if stated_name and (newest_name is None or version >= newest_name[0]):
            newest_name = (version, stated_name)
        previous = known.get(dist_file.filename)
        if previous is None:
            summary.files_added += 1
        elif previous != dist_file:
            summary.files_changed += 1
        summary.errors += failed
    name = registered or (
        newest_name[1] if newest_name and _same_project(newest_name[1], normalized_name) else None
    )
    name = name or (existing.name if existing is not None else page.name)
    releases = [
        Release.from_files(text, tuple(files), version)
        for version, (text, files) in by_version.items()
    ]
    project = Project.create(name, releases, page.state)
    if existing is not None and project == existing:
        return None
    old_versions = {r.version for r in existing.releases} if existing else set()
    summary.releases_added += sum(1 for r in project.releases if r.version not in old_versions)
    summary.changed += 1
    return project


def _with_serial(existing: Project | None, listed_serial: int | None) -> Project | None:
    """Return an unchanged project to write again only when the root's serial for it moved."""
    # Without this, a page the source answers 304 for would be asked for by every sync.
    if existing is None or listed_serial in (None, existing.source_state.serial):
        return None
    return replace(existing, source_state=replace(existing.source_state, serial=listed_serial))


def _existing(
    catalog: Catalog, parent: CommitId | None, normalized_name: NormalizedName
) -> tuple[Project | None, SourceState]:
    """Return the project as mirrored so far, and the state to ask the source with."""
    if parent is None:
        return None, SourceState()
    try:
        existing = catalog.get_project(parent, normalized_name)
    except NotFound:
        return None, SourceState()
    except InvalidData:
        # A file the server cannot read (written by hand, or by an older sync) is rewritten
        # whole from the source instead of wedging every sync that includes it.
        return None, SourceState()
    if any(f.metadata_status in READ_AGAIN for r in existing.releases for f in r.files):
        # Files whose fetch failed, or that pull-through has not read yet, are read again,
        # though the page itself may not be new.
        return existing, SourceState()
    return existing, existing.source_state


def _is_version(text: str) -> bool:
    try:
        parse_version(text)
    except InvalidInput:
        return False
    return True


def _same_project(stated: str, normalized_name: NormalizedName) -> bool:
    try:
        return normalize_name(stated) == normalized_name
    except InvalidInput:
        return False
