"""Whole-index answers are computed off the event loop: a miss never stalls cheap requests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from metasrv.config import MetaConfig, PullThroughConfig
from metasrv.http.app import create_app
from metasrv.http.bytecache import ByteCache
from metasrv.http.listings import Listings
from metasrv.http.readapi import BODY_CACHE_BYTES
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import Catalog
from metasrv.repo.namesfile import names_file
from metasrv.repo.storage import Storage
from tests.builders import SOURCE_URL, make_project, project_files
from tests.deadlines import THREAD_DEADLINE_SECONDS

# Large enough that reading every project's name takes far longer than answering "/" does.
PROJECTS = 5_000
# Computed on the loop, a miss lets through only the few cheap requests that interleave with its
# request's own suspension points before and after it (4 to 8 measured); off the loop, hundreds.
CHEAP_ANSWERS_DURING_THE_MISS = 40


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
    names_file(Path(storage.path)).unlink(missing_ok=True)  # else the listing is read from it
    app = create_app(Path(storage.path))

    async def scenario() -> tuple[int, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metasrv.test") as client:
            miss = asyncio.create_task(client.get(path.format(empty=empty)))
            answered = 0
            while not miss.done():
                await asyncio.sleep(0)  # yield: the in-process app may answer without suspending
                cheap = await client.get("/v1/projects/project-1")
                assert cheap.status_code == 200
                answered += 1
            return answered, await miss

    answered, miss = asyncio.run(asyncio.wait_for(scenario(), THREAD_DEADLINE_SECONDS))
    assert miss.status_code == 200
    assert "project-999" in miss.text
    assert answered >= CHEAP_ANSWERS_DURING_THE_MISS


def test_concurrent_misses_of_one_tree_are_computed_once(large: tuple[Storage, str]) -> None:
    storage, empty = large
    listings = Listings(storage.path, ByteCache(BODY_CACHE_BYTES))
    head = storage.resolve(None)
    tree_id = Catalog(storage).data_tree(head)
    since = storage.resolve(empty)

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        # All start before the first can finish: each joins the one job, or gets its own body.
        pages = [listings.listing(head, tree_id) for _ in range(8)]
        diffs = [listings.changes(since, head, tree_id) for _ in range(8)]
        return list(await asyncio.gather(*pages)), list(await asyncio.gather(*diffs))

    pages, diffs = asyncio.run(asyncio.wait_for(scenario(), THREAD_DEADLINE_SECONDS))
    assert all(page is pages[0] for page in pages)
    assert all(diff is diffs[0] for diff in diffs)
    assert len(json.loads(pages[0])["projects"]) == PROJECTS
    assert len(json.loads(diffs[0])["projects"]) == PROJECTS
