"""Whole-index answers are computed off the event loop: a miss never stalls cheap requests."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import httpx
import pytest

from metasrv.config import MetaConfig, PullThroughConfig
from metasrv.http.app import create_app
from metasrv.http.bytecache import ByteCache
from metasrv.http.listings import MISS_WORKERS, Listings
from metasrv.http.readapi import BODY_CACHE_BYTES
from metasrv.index.pages import MIME_SIMPLE_HTML
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import Catalog
from metasrv.repo.namesfile import names_file
from metasrv.repo.storage import Storage
from tests.builders import SOURCE_URL, make_project, project_files
from tests.deadlines import THREAD_DEADLINE_SECONDS

PROJECTS = 5_000
# Misses with keys of their own, each reading the saved listing first: as many as miss workers.
BLOCKING_MISSES = ("/simple/", "/simple/?format=application/vnd.pypi.simple.v1%2Bjson")
CHEAP_REQUESTS = 20


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Storage, str]:
    """Return a meta repository of many projects, and a commit from before they were added."""
    storage = Storage.init(tmp_path_factory.mktemp("large") / "meta")
    config = MetaConfig(source_url=SOURCE_URL, pull_through=PullThroughConfig(enabled=False))
    empty = storage.commit("main", {"metasrv.toml": tomlcodec.dumps(config.to_toml())}, "start")
    assert empty is not None
    projects = [make_project(f"project-{number}", ["1.0"]) for number in range(PROJECTS)]
    storage.commit("main", project_files(*projects), "many projects")
    return storage, empty


class HeldListing:
    """The saved listing as a FIFO: a miss that reads it waits there until ``release()``.

    Released, the FIFO moves aside and a thread opens it for each reader waiting at it, who reads
    an empty file (no saved listing); later readers find none. Nothing depends on when a worker
    reaches the FIFO.
    """

    def __init__(self, storage: Storage) -> None:
        self.path = names_file(Path(storage.path))
        self.path.unlink(missing_ok=True)
        self.path.parent.mkdir(exist_ok=True)
        os.mkfifo(self.path)
        self._aside = self.path.with_name(f"{self.path.name}.held")
        self._done = threading.Event()
        self._releaser = threading.Thread(target=self._let_through, daemon=True)
        self._lock = threading.Lock()

    def release(self) -> None:
        """Let every reader through, those waiting and those to come; again, nothing."""
        with self._lock:
            if not self._releaser.is_alive() and not self._done.is_set():
                self.path.rename(self._aside)
                self._releaser.start()

    def close(self) -> None:
        """Release whoever still waits (a test that failed early), then stop and tidy up."""
        self.release()
        with self._lock:
            self._done.set()
        if self._releaser.is_alive():
            # A reader of our own: the thread's open returns, and it sees it is done.
            reader = os.open(self._aside, os.O_RDONLY | os.O_NONBLOCK)
            self._releaser.join(THREAD_DEADLINE_SECONDS)
            os.close(reader)
        self._aside.unlink(missing_ok=True)

    def _let_through(self) -> None:
        while not self._done.is_set():
            with open(self._aside, "wb"):  # waits for a reader, then ends its file
                pass


@pytest.mark.parametrize(
    "path",
    [
        "/simple/",
        "/simple/?format=application/vnd.pypi.simple.v1%2Bjson",
        "/v1/projects",
        "/v1/projects?since={empty}",
    ],
)
def test_cheap_requests_answer_while_a_whole_index_miss_is_computed(
    large: tuple[Storage, str], path: str
) -> None:
    storage, empty = large
    assert len(BLOCKING_MISSES) == MISS_WORKERS
    # Both miss workers wait at the saved listing, so the miss under test cannot finish while
    # the cheap requests run.
    held = HeldListing(storage)
    threads_before = set(threading.enumerate())
    app = create_app(Path(storage.path))

    def held_workers() -> int:
        # A miss worker starts when a miss is submitted to it, and this app's are new threads.
        new = set(threading.enumerate()) - threads_before
        return sum(thread.name.startswith("metasrv-misses") for thread in new)

    # Should the loop itself wait at the FIFO (a miss computed on it), this frees it to fail.
    failsafe = threading.Timer(THREAD_DEADLINE_SECONDS, held.release)
    failsafe.start()

    async def scenario() -> tuple[bool, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metasrv.test") as client:
            blocking = [asyncio.create_task(client.get(held_path)) for held_path in BLOCKING_MISSES]
            while held_workers() < MISS_WORKERS:
                await asyncio.sleep(0)  # let the blocking requests reach their workers
            miss = asyncio.create_task(client.get(path.format(empty=empty)))
            for _ in range(CHEAP_REQUESTS):
                await asyncio.sleep(0)  # yield: the in-process app may answer without suspending
                cheap = await client.get("/v1/projects/project-1")
                assert cheap.status_code == 200
            finished_early = miss.done()
            held.release()
            assert all(answer.status_code == 200 for answer in await asyncio.gather(*blocking))
            return finished_early, await miss

    try:
        finished_early, miss = asyncio.run(
            asyncio.wait_for(scenario(), 2 * THREAD_DEADLINE_SECONDS)
        )
    finally:
        failsafe.cancel()
        held.close()
    assert not finished_early
    assert miss.status_code == 200
    assert "project-999" in miss.text


def test_concurrent_misses_of_one_tree_are_computed_once(large: tuple[Storage, str]) -> None:
    storage, empty = large
    assert MISS_WORKERS == 2  # the listing job and the root page hold them all
    held = HeldListing(storage)
    listings = Listings(storage.path, ByteCache(BODY_CACHE_BYTES))
    head = storage.resolve(None)
    tree_id = Catalog(storage).data_tree(head)
    since = storage.resolve(empty)

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        pages = [asyncio.create_task(listings.listing(head, tree_id)) for _ in range(8)]
        # The root page also reads the saved listing: with both workers held, the diff waits.
        root = asyncio.create_task(listings.index_page(head, tree_id, MIME_SIMPLE_HTML))
        diffs = [asyncio.create_task(listings.changes(since, head, tree_id)) for _ in range(8)]
        # Each task runs to the job it starts or joins; no job can finish before the release.
        await asyncio.sleep(0)
        held.release()
        await root
        return list(await asyncio.gather(*pages)), list(await asyncio.gather(*diffs))

    try:
        pages, diffs = asyncio.run(asyncio.wait_for(scenario(), THREAD_DEADLINE_SECONDS))
    finally:
        held.close()
    assert all(page is pages[0] for page in pages)
    assert all(diff is diffs[0] for diff in diffs)
    assert len(json.loads(pages[0])["projects"]) == PROJECTS
    assert len(json.loads(diffs[0])["projects"]) == PROJECTS
