"""Whole-index answers (listings, diffs, the simple root page) cached by data tree and, on a
miss, computed on worker threads, one job per key however many clients ask."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from metasrv.http import documents
from metasrv.http.bytecache import ByteCache
from metasrv.http.simplepages import index_page_chunks
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import CommitId, Storage

T = TypeVar("T")
# Listings and diffs read every blob of a data tree: two at once leave a core for the loop.
MISS_WORKERS = 2


class Misses:
    """Run cache misses off the event loop, coalesced: a miss asked for while it runs joins it.

    Each worker reads through a repository handle of its own (a libgit2 handle is not shared
    between threads) and a catalog of its own, which lists a new tree by diffing from its last.
    """

    def __init__(self, repo_path: Path, workers: int = MISS_WORKERS) -> None:
        self.repo_path = repo_path
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="metasrv-misses")
        self._lock = threading.Lock()
        self._running: dict[Hashable, Future[Any]] = {}
        self._local = threading.local()

    async def compute(self, key: Hashable, work: Callable[[Catalog], T]) -> T:
        """Return ``work(catalog)`` run on a worker; ``key`` names what ``work`` computes."""
        with self._lock:
            job = self._running.get(key)
            started = job is None
            if job is None:
                job = self._executor.submit(self._run, work)
                self._running[key] = job
        if started:
            # Outside the lock: a job already done runs the callback here, and it takes the lock.
            job.add_done_callback(lambda done: self._forget(key, done))
        # Shielded: one client going away must not cancel the job others wait for.
        return cast(T, await asyncio.shield(asyncio.wrap_future(job)))

    def _run(self, work: Callable[[Catalog], T]) -> T:
        catalog: Catalog | None = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = self._local.catalog = Catalog(Storage(self.repo_path))
        return work(catalog)

    def _forget(self, key: Hashable, done: Future[Any]) -> None:
        with self._lock:
            if self._running.get(key) is done:
                del self._running[key]


class Listings:
    """Bodies of whole-index answers; each depends only on data trees, so it is keyed by them."""

    def __init__(self, repo_path: Path, bodies: ByteCache) -> None:
        self.misses = Misses(repo_path)
        self.bodies = bodies  # diffs: many, each bounded by the cache's byte budget
        # The listing and root pages are ~45 MB each at PyPI scale: one data tree's at a time.
        self._pages: dict[tuple[str, str], bytes] = {}

    async def listing(self, commit_id: CommitId, tree_id: str) -> bytes:
        """Return the JSON of ``GET /v1/projects`` for a data tree."""
        return await self._page(tree_id, "listing", commit_id)

    async def index_page(self, commit_id: CommitId, tree_id: str, content_type: str) -> bytes:
        """Return the simple API's root page for a data tree, in a content type."""
        return await self._page(tree_id, content_type, commit_id)

    async def _page(self, tree_id: str, kind: str, commit_id: CommitId) -> bytes:
        body = self._pages.get((tree_id, kind))
        if body is not None:
            return body

        def render(catalog: Catalog) -> bytes:
            names = catalog.list_projects(commit_id)
            if kind == "listing":
                return documents.encode(documents.render_listing(names))
            return b"".join(index_page_chunks(names, kind))

        body = await self.misses.compute(("page", tree_id, kind), render)
        self._pages = {key: page for key, page in self._pages.items() if key[0] == tree_id}
        self._pages[(tree_id, kind)] = body
        return body

    async def changes(self, since_id: CommitId, commit_id: CommitId, tree_id: str) -> bytes:
        """Return the JSON of ``GET /v1/projects?since=`` from one commit to a data tree."""
        # Mirrors poll with the commit they last saw: the diff is read once per data tree.
        key = ("since", since_id, tree_id)
        body = self.bodies.get(key)
        if body is None:

            def diff(catalog: Catalog) -> bytes:
                changes = catalog.changed_since(since_id, commit_id)
                return documents.encode(documents.render_changes(since_id, changes))

            body = await self.misses.compute(key, diff)
            self.bodies.put(key, body)
        return body
