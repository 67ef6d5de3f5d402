"""``follow = S`` in metasrv.toml: a pull-through server follows the whole index itself."""

from __future__ import annotations

import time

import pytest

from metasrv.config import MetaConfig
from metasrv.errors import InvalidData
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import CONFIG_PATH, Catalog
from metasrv.repo.storage import Storage
from metasrv.tables import FORMAT_VERSION
from tests.conftest import running_server
from tests.distributions import build_wheel
from tests.test_wholeindex import DEADLINE_SECONDS, Mirror, mirror

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
