"""``follow = S`` in metasrv.toml: a pull-through server follows the whole index itself."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pygit2
import pytest

from metasrv.config import MetaConfig
from metasrv.errors import InvalidData, NotFound
from metasrv.index.sync import SyncSummary
from metasrv.index.wholeindex import follow
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import CONFIG_PATH, Catalog
from metasrv.repo.storage import Storage
from metasrv.tables import FORMAT_VERSION
from tests.conftest import running_server
from tests.distributions import build_wheel
from tests.test_wholeindex import DEADLINE_SECONDS, FAST, Mirror, mirror

__all__ = ["mirror"]  # the fixture, shared with the whole-index sync tests


def _configure(storage: Storage, config: MetaConfig) -> None:
    storage.commit(
        storage.head_branch(), {CONFIG_PATH: tomlcodec.dumps(config.to_toml())}, "configure"
    )


def test_a_pull_through_server_with_follow_syncs_new_projects_unasked(mirror: Mirror) -> None:
    serials = mirror.index.behaviour.serials
    assert serials is not None
    _configure(mirror.meta, MetaConfig(source_url=mirror.index.simple_url, follow=1))
    build_wheel(mirror.folder, "newcomer", "0.1")
    serials["newcomer"] = 300
    catalog = Catalog(mirror.meta)
    with running_server(["--repo", str(mirror.meta.path)]):
        deadline = time.monotonic() + DEADLINE_SECONDS
        while "newcomer" not in catalog.list_projects(mirror.meta.resolve(None)):
            assert time.monotonic() < deadline, "the server never followed the source"
            time.sleep(0.05)  # polling git for the follow's commit, with a deadline
    head = mirror.meta.resolve(None)
    for name in catalog.list_projects(head):
        catalog.get_project(head, name)  # every file parses after the server stopped
    # Nobody asked the server for newcomer: its page was read by the follow, once.
    assert mirror.index.page_requests().count("/simple/newcomer/") == 1


@pytest.mark.parametrize("seconds", [0, -5])
def test_follow_below_a_second_is_refused(seconds: int) -> None:
    with pytest.raises(InvalidData, match="follow"):
        MetaConfig.from_toml({"format": FORMAT_VERSION, "follow": seconds}, "metasrv.toml")


def test_follow_round_trips_through_metasrv_toml() -> None:
    config = MetaConfig(source_url="https://pypi.org/simple/", follow=30)
    document = tomlcodec.loads(tomlcodec.dumps(config.to_toml()), where="metasrv.toml")
    assert MetaConfig.from_toml(document, "metasrv.toml") == config
    assert b"follow = 30" in tomlcodec.dumps(config.to_toml())


def test_follow_reports_an_error_of_ours_and_goes_on_to_the_next_round(mirror: Mirror) -> None:
    # A detached HEAD with the follow's branch not made yet: the round cannot find where the
    # branch starts (NotFound, no source error). The follow must say so and go on.
    git = pygit2.Repository(str(mirror.meta.path))
    branch = git.head.shorthand
    git.set_head(git.head.target)
    serials = mirror.index.behaviour.serials
    assert serials is not None
    serials["proj03"] = 999  # the root moves, so the next good round has one project to sync
    outcomes: list[SyncSummary | Exception] = []
    stop = asyncio.Event()

    def report(outcome: SyncSummary | Exception) -> None:
        outcomes.append(outcome)
        if len(outcomes) == 1:
            git.set_head(f"refs/heads/{branch}")  # mended: the next round must run and succeed
        else:
            stop.set()

    options = replace(FAST, branch="pulled")

    async def run() -> None:
        await asyncio.wait_for(
            follow(
                mirror.meta,
                mirror.index.simple_url,
                options,
                interval=0.01,
                stop=stop,
                report=report,
            ),
            DEADLINE_SECONDS,
        )

    asyncio.run(run())
    first, second = outcomes
    assert isinstance(first, NotFound)
    assert isinstance(second, SyncSummary)
    assert second.changed == 1
