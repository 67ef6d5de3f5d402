"""Whole-index sync: diff the source root's serials against the mirror's, and keep following."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

from packaging.utils import NormalizedName

from metasrv.errors import MetasrvError
from metasrv.index.client import Fetcher, make_client, open_source
from metasrv.index.rootindex import RootListing, read_root
from metasrv.index.sync import (
    Plan,
    Progress,
    SyncOptions,
    SyncSummary,
    base_commit,
    check_options,
    run_plan,
)
from metasrv.index.syncstate import STATE_FOLDER, SyncState
from metasrv.repo.locks import try_lock
from metasrv.repo.storage import CommitId, Storage

Report = Callable[[SyncSummary | Exception], None]
FOLLOW_LOCK = "follow.lock"


def sync_all(
    storage: Storage,
    source_location: str,
    options: SyncOptions | None = None,
    progress: Progress | None = None,
) -> SyncSummary:
    """Mirror every project the source lists: only new and changed ones, removing the unlisted."""
    options = options or SyncOptions()
    check_options(options)
    state = SyncState(storage, options.branch or storage.head_branch())
    return asyncio.run(sync_all_once(storage, source_location, options, state, progress=progress))


async def sync_all_once(
    storage: Storage,
    source_location: str,
    options: SyncOptions,
    state: SyncState,
    *,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
) -> SyncSummary:
    """Run one whole-index sync: one conditional root request, then the projects it shows moved.

    A root without serials leaves every listed project to its own conditional request.
    """
    branch = options.branch or storage.head_branch()
    summary = SyncSummary()
    async with make_client(options.fetch) as client:
        fetcher = Fetcher(client, options.fetch)
        source = open_source(source_location, fetcher)
        head = base_commit(storage, branch)
        listing = await read_root(source, state.root_etag(source.url, head))
        if listing is not None:
            plan = _plan(listing, state.serials(head))
            completed = await run_plan(
                storage, source, plan, options, summary, progress=progress, stop=stop
            )
            if completed:
                _record_root(state, source.url, listing, base_commit(storage, branch))
        summary.requests, summary.bytes_fetched = fetcher.requests, fetcher.bytes_fetched
    return summary


def _plan(listing: RootListing, stored: dict[NormalizedName, int | None]) -> Plan:
    """Sync what is new or whose serial moved; remove what the root no longer lists."""
    listed = listing.serials
    targets = sorted(
        name for name, serial in listed.items() if serial is None or stored.get(name) != serial
    )
    removals = sorted(name for name in stored if name not in listed)
    return Plan(
        targets, listing.spellings, listed, removals, root_spells_names=listing.spells_names
    )


def _record_root(
    state: SyncState, source_url: str, listing: RootListing, head: CommitId | None
) -> None:
    """Keep the root's ETag only when a 304 on it will mean that nothing at all changed."""
    stored = state.serials(head)
    complete = all(
        serial is not None and stored.get(name) == serial
        for name, serial in listing.serials.items()
    )
    state.record_root(source_url, listing.etag if complete else None, head)


async def follow(
    storage: Storage,
    source_location: str,
    options: SyncOptions,
    *,
    interval: float,
    stop: asyncio.Event,
    report: Report,
) -> None:
    """Sync the whole index every ``interval`` seconds until ``stop`` is set.

    ``stop`` is honoured between commits: a checkpoint in flight is committed first. A source
    that fails, or any other error of ours, is reported and tried again next time.
    """
    check_options(options)
    state = SyncState(storage, options.branch or storage.head_branch())
    while not stop.is_set():
        try:
            summary = await sync_all_once(
                storage, source_location, options, state, stop=stop.is_set
            )
        except MetasrvError as exc:
            # Any of ours (a failing source, a hand-edited file that no longer parses, a bad
            # metasrv.toml): report it and try again next round, never end the follow silently.
            report(exc)
        else:
            report(summary)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


class Follower:
    """``follow`` in a thread of its own, for a server; one per repository across processes.

    The thread opens its own repository handle (pygit2 objects stay in one thread) and follows
    only while it holds the repository's follow lock, so of several server workers one syncs.
    """

    def __init__(
        self,
        repo_path: Path,
        source_location: str,
        options: SyncOptions,
        *,
        interval: float,
        report: Report,
    ) -> None:
        self.repo_path, self.source_location, self.options = repo_path, source_location, options
        self.interval, self.report = interval, report
        self._thread = threading.Thread(target=self._run, name="metasrv-follow", daemon=True)
        self._started, self._stopping = threading.Event(), threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        """Start following in the background."""
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop between commits and wait up to ``timeout`` seconds; return whether it ended."""
        self._stopping.set()
        if self._started.wait(timeout) and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        asyncio.run(self._follow())

    async def _follow(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started.set()
        if self._stopping.is_set():
            return
        storage = Storage(self.repo_path)
        lock_path = storage.path / STATE_FOLDER / FOLLOW_LOCK
        lock_path.parent.mkdir(exist_ok=True)
        with open(lock_path, "w") as lock_file:
            while not try_lock(lock_file.fileno()):  # another process follows: wait for it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)
                if self._stop.is_set():
                    return
            await follow(
                storage,
                self.source_location,
                self.options,
                interval=self.interval,
                stop=self._stop,
                report=self.report,
            )
