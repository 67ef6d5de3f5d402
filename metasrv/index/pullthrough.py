"""Pull-through: a project the data lacks is fetched on its first request, committed, kept fresh."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from packaging.utils import NormalizedName
from packaging.version import Version

from metasrv.errors import (
    InvalidData,
    MetasrvError,
    NotFound,
    SourceError,
    SourceUnavailable,
    UnknownProject,
)
from metasrv.index.client import Fetcher, FetchOptions, FolderSource, IndexSource, make_client
from metasrv.index.client import open_source as open_index
from metasrv.index.pagefiles import read_page_files
from metasrv.index.pages import ProjectPage
from metasrv.index.projectmerge import adopt, batches, fill, pending_files, pending_of
from metasrv.index.pullloop import LoopThread
from metasrv.index.pullwriter import PullWriter
from metasrv.index.sync import SyncSummary, assemble_project
from metasrv.index.transport import AiohttpClient
from metasrv.lru import WeighedCache
from metasrv.model import DistFile, Project, Release, SourceState
from metasrv.names import normalize_name
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import BlobId, Storage

# A source that fails answers fast: one retry, then the client hears 503 (or stale data).
FETCH = FetchOptions(concurrency=8, retries=1, backoff_seconds=0.2, timeout_seconds=20.0)
MISSING_SECONDS = 30.0  # a source's 404 is remembered this long: misses must not flood it
MISSING_CAPACITY = 10_000
# Pages kept to read pending metadata without asking again, by count and by files (a page's
# file is ~1.2 KB of objects: numpy's page is 5 MB).
PAGE_CACHE_SIZE = 512
PAGE_CACHE_FILES = 20_000
# Files read per background commit: each commit rewrites the whole project file (numpy's is
# ~1 MB), so fewer, larger commits; what a client waits for is read in one.
BACKGROUND_BATCH_FILES = 500
# Background metadata reads, one project at a time, once clients have asked nothing for a while:
# they must not take the source's connections, the writer or the CPU from what clients wait for.
BACKGROUND_READS = 1
IDLE_SECONDS = 1.0
# A background batch asks for hundreds of files at once: it has source slots of its own, fewer
# than clients', so that a client's page never queues behind it (pandas' first page waited 6 s
# behind the metadata of a project pulled before it).
BACKGROUND_FETCHES = 4

T = TypeVar("T")


class PullThrough:
    """Fetch, commit, refresh a source's projects on a thread with its own loop and git handles."""

    def __init__(
        self,
        repo_path: Path,
        source_url: str,
        *,
        branch: str | None = None,
        refresh: float = 600.0,
        fetch: FetchOptions = FETCH,
        log: Callable[[str], None] | None = None,
        build_in_background: bool = False,
        reader: Catalog | None = None,
    ) -> None:
        self.source_url = source_url
        self.refresh = refresh
        self.stale: dict[NormalizedName, str] = {}
        self._fetch = fetch
        self._log = log or (lambda line: None)
        self._storage = Storage(repo_path)  # read on the pull thread only
        self._storage.data_branch = branch
        self._catalog = Catalog(self._storage)
        self._reader = reader  # the server's catalog, seeded with what is written for it
        self._writer = PullWriter(
            repo_path,
            source_url,
            branch,
            build_in_background=build_in_background,
            written=self._remember,
        )
        try:
            self._writer.follow_head()  # HEAD's commits since the last run: served from the start
        except MetasrvError as exc:
            self._log(f"pull-through: {branch} does not follow HEAD's branch: {exc.message}")
        self._thread = LoopThread("metasrv-pull-through")
        # Dropped without close() (an app whose lifespan never ran): its thread and client end.
        weakref.finalize(self, self._thread.drop).atexit = False
        self._inflight: dict[tuple[str, ...], asyncio.Future[None]] = {}
        self._missing: dict[NormalizedName, float] = {}
        self._checked: dict[NormalizedName, float] = {}
        self._pages: WeighedCache[NormalizedName, ProjectPage] = WeighedCache(
            PAGE_CACHE_FILES, lambda _, page: 1 + len(page.files), max_entries=PAGE_CACHE_SIZE
        )
        self._background: set[asyncio.Task[None]] = set()
        self._client: AiohttpClient | None = None
        # The source as clients' work reads it, and as background reads do (slots of their own).
        self._sources: tuple[IndexSource | FolderSource, IndexSource | FolderSource] | None = None
        self._asked = 0  # pulls a client waits for, in flight on the pull loop
        self._quiet: asyncio.Event | None = None  # set while none is
        self._last_asked = 0.0  # when a client last read through pull-through (monotonic)
        self._background_reads = asyncio.Semaphore(BACKGROUND_READS)

    # Called from any thread or loop.
    @property
    def queued(self) -> int:
        """Return how many changes wait to be committed, the one being committed included."""
        return self._writer.queued

    async def ensure(self, name: str) -> None:
        """Make the project part of the served data, fetching it from the source if need be."""
        normalized_name = normalize_name(name)  # invalid names never reach the source
        self._raise_if_missing(normalized_name)
        await self._call(self._ensure(normalized_name))

    async def complete(
        self, name: str, version: Version | None = None, filename: str | None = None
    ) -> None:
        """Read the pending metadata of one release (None: every release), or of one of its
        files only, and commit it."""
        await self._call(self._complete(normalize_name(name), version, filename))

    def touch(self, normalized_name: NormalizedName) -> None:
        """Re-check a project with the source in the background when ``refresh`` has passed."""
        self._last_asked = time.monotonic()
        checked = self._checked.get(normalized_name)
        if checked is not None and time.monotonic() - checked < self.refresh:
            return
        self._checked[normalized_name] = time.monotonic()  # one re-check per interval
        self._thread.loop().call_soon_threadsafe(self._spawn_refresh, normalized_name)

    async def warm_up(self) -> None:
        """Open the source's client on the pull thread and wait for it: an https source's
        certificates take tens of milliseconds that the first pulls would otherwise wait for."""
        await self._call(self._opened())

    def close(self) -> None:
        """Stop the pull thread, cancelling background work and closing the source's client."""
        self._thread.stop(self._shutdown())

    def _raise_if_missing(self, normalized_name: NormalizedName) -> None:
        until = self._missing.get(normalized_name)
        if until is not None and time.monotonic() < until:
            raise NotFound(f"the source has no project {normalized_name!r}")

    async def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._thread.loop())
        return await asyncio.wrap_future(future)

    # On the pull thread's loop.
    async def _shutdown(self) -> None:
        running = [*self._background, *self._inflight.values(), *self._writer.running()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _opened(self) -> None:
        # A source that cannot be opened fails each pull with its own error, not the server's start.
        with contextlib.suppress(MetasrvError):
            self._open_source(background=False)

    def _open_source(self, *, background: bool) -> IndexSource | FolderSource:
        """Return the source as clients' work reads it, or as background reads do."""
        if self._client is None:
            self._client = make_client(self._fetch)
            if self.source_url.startswith("https://"):
                # ~18 ms of the GIL: at the warm-up, not in the first pull.
                self._client.prepare_tls(self.source_url)
            self._thread.closers.append(self._client.aclose)
        if self._sources is None:
            slots = replace(
                self._fetch, concurrency=min(BACKGROUND_FETCHES, self._fetch.concurrency)
            )
            self._sources = (
                open_index(self.source_url, Fetcher(self._client, self._fetch)),
                open_index(self.source_url, Fetcher(self._client, slots)),
            )
        return self._sources[1] if background else self._sources[0]

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _spawn_refresh(self, normalized_name: NormalizedName) -> None:
        self._spawn(self._refresh(normalized_name))

    async def _single(
        self, key: tuple[str, ...], start: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        """Run one piece of work per key at a time; later callers wait on the running one."""
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(start())
            self._inflight[key] = future
            future.add_done_callback(lambda _: self._inflight.pop(key, None))
            # Retrieved here too: callers that went away (a client hung up) must not leave it
            # "never retrieved".
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(future)

    def _remember(self, blob_id: BlobId, project: Project) -> None:
        self._catalog.remember(blob_id, project)
        if self._reader is not None:
            self._reader.remember(blob_id, project)

    def _head_project(self, normalized_name: NormalizedName) -> Project | None:
        try:
            return self._catalog.get_project(self._storage.resolve(None), normalized_name)
        except UnknownProject:
            return None

    def _quiet_event(self) -> asyncio.Event:
        if self._quiet is None:
            self._quiet = asyncio.Event()
            self._quiet.set()
        return self._quiet

    async def _asked_for(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run work a client waits for; background reads hold back meanwhile."""
        self._asked += 1
        self._quiet_event().clear()
        try:
            await coroutine
        finally:
            self._asked -= 1
            self._last_asked = time.monotonic()
            if not self._asked:
                self._quiet_event().set()

    async def _idle(self) -> None:
        """Wait until no client has waited for, or read through, pull-through for a while."""
        while True:
            await self._quiet_event().wait()
            idle = time.monotonic() - self._last_asked
            if idle >= IDLE_SECONDS:
                return
            await asyncio.sleep(IDLE_SECONDS - idle)

    async def _ensure(self, normalized_name: NormalizedName) -> None:
        head = self._storage.resolve(None)
        try:
            self._catalog.project_blob(head, normalized_name)
        except UnknownProject:
            pull = self._single(("pull", normalized_name), lambda: self._pull(normalized_name))
            await self._asked_for(pull)

    async def _refresh(self, normalized_name: NormalizedName) -> None:
        existing = self._head_project(normalized_name)
        if existing is None:
            return
        try:
            await self._single(
                ("pull", normalized_name), lambda: self._pull(normalized_name, existing)
            )
        except MetasrvError as exc:
            self._log(f"pull-through {normalized_name}: refresh failed: {exc.message}")

    async def _pull(self, normalized_name: NormalizedName, existing: Project | None = None) -> None:
        started = time.monotonic()
        with self._writer.coming():  # the next commit waits a little for this one
            project, files = await self._fetched(normalized_name, existing)
        if project is None:
            return
        kind = "new" if existing is None else "refreshed"
        commit_id = await self._writer.write(
            normalized_name, adopt(project), f"{project.name} ({kind}, {len(files)} files)", {}
        )
        elapsed = (time.monotonic() - started) * 1000
        self._log(
            f"pull-through {normalized_name}: {len(files)} files, {elapsed:.0f} ms, "
            f"commit {(commit_id or '-')[:12]}"
        )
        if any(f.metadata_pending for f in files):
            self._spawn(self._complete_quietly(normalized_name))

    async def _fetched(
        self, normalized_name: NormalizedName, existing: Project | None
    ) -> tuple[Project | None, list[DistFile]]:
        """Fetch the project's page; return the project it makes (None: unchanged) and its files."""
        # A re-check is background work: a restart's first reads re-check every project read.
        source = self._open_source(background=existing is not None)
        state = existing.source_state if existing is not None else SourceState()
        try:
            page = await source.project_page(normalized_name, state)
        except NotFound:
            if len(self._missing) >= MISSING_CAPACITY:
                self._missing.clear()  # random names must not grow memory; it is only a shield
            self._missing[normalized_name] = time.monotonic() + MISSING_SECONDS
            raise
        except MetasrvError as exc:
            self._checked[normalized_name] = time.monotonic()
            if existing is not None:
                self.stale[normalized_name] = f"the source failed: {exc.message}"
                raise
            raise SourceUnavailable(
                f"{normalized_name}: the source {self.source_url} failed: {exc.message}"
            ) from None
        self._checked[normalized_name] = time.monotonic()
        self.stale.pop(normalized_name, None)
        if page is None:
            return None, []
        self._pages.put(normalized_name, page)
        known = {f.filename: f for r in existing.releases for f in r.files} if existing else {}
        files = pending_files(page, known)
        read: list[tuple[DistFile, str | None, bool]] = [(f, None, False) for f in files]
        try:
            project = assemble_project(
                normalized_name, page, read, existing, registered=None, summary=SyncSummary()
            )
        except InvalidData as exc:
            raise SourceError(f"the source's page is unusable: {exc.message}") from None
        return project, files

    async def _complete_quietly(self, normalized_name: NormalizedName) -> None:
        try:
            key = ("metadata", normalized_name, "background")
            await self._single(key, lambda: self._read_in_background(normalized_name))
        except MetasrvError as exc:
            self._log(f"pull-through {normalized_name}: metadata not read: {exc.message}")

    async def _complete(
        self, normalized_name: NormalizedName, version: Version | None, filename: str | None
    ) -> None:
        key = ("metadata", normalized_name, str(version), filename or "")
        read = self._single(key, lambda: self._read_metadata(normalized_name, version, filename))
        await self._asked_for(read)

    async def _read_metadata(
        self, normalized_name: NormalizedName, version: Version | None, filename: str | None
    ) -> None:
        project = self._head_project(normalized_name)
        releases = pending_of(project, version) if project is not None else []
        if releases:
            source = self._open_source(background=False)
            page = await self._page(normalized_name, source)
            await self._read_chunk(normalized_name, source, page, releases, only=filename)

    async def _read_in_background(self, normalized_name: NormalizedName) -> None:
        async with self._background_reads:
            await self._idle()
            project = self._head_project(normalized_name)
            releases = pending_of(project) if project is not None else []
            source = self._open_source(background=True)
            for batch in batches(releases, BACKGROUND_BATCH_FILES):
                await self._idle()
                page = await self._page(normalized_name, source)
                await self._read_chunk(normalized_name, source, page, batch)

    async def _page(
        self, normalized_name: NormalizedName, source: IndexSource | FolderSource
    ) -> ProjectPage:
        """Return the project's page as last fetched, fetching it if it is no longer kept."""
        page = self._pages.get(normalized_name)
        if page is None:
            page = await source.project_page(normalized_name, SourceState())
            assert page is not None  # an unconditional request always has a page
            self._pages.put(normalized_name, page)
        return page

    async def _read_chunk(
        self,
        normalized_name: NormalizedName,
        source: IndexSource | FolderSource,
        page: ProjectPage,
        chunk: list[Release],
        only: str | None = None,
    ) -> None:
        """Read the pending files of some releases (``only``: that file) and commit them."""
        listed = {f.filename: f for f in page.files}
        files = [f for r in chunk for f in r.files if f.filename in listed]
        # Files read before are reused, not asked for again: they tell whether an sdist is needed.
        known = {f.filename: f for f in files if not f.metadata_pending}
        # One file: a .metadata request waits for its own wheel, not for the 170 of its release.
        wanted = [f for f in files if only in (None, f.filename) or f.filename in known]
        documents: dict[str, bytes] = {}  # committed with this job, never with another's
        chunk_page = ProjectPage(page.name, tuple(listed[f.filename] for f in wanted))
        read = await read_page_files(source, chunk_page, known, documents)
        filled = {d.filename: d for d, _, _ in read if d.filename not in known}
        stated = next((name for _, name, _ in reversed(read) if name), None)
        await self._writer.write(
            normalized_name,
            fill(filled, stated),
            f"{normalized_name} (metadata of {len(filled)} files)",
            documents,
        )
