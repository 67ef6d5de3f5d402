"""No page request downloads a wheel: rewritten wheels are prepared in the background."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from metasrv.cli.main import main
from metasrv.http.app import create_app
from metasrv.repo.storage import Storage
from tests.conftest import AsgiClient, running_server
from tests.deadlines import poll_until
from tests.distributions import build_wheel
from tests.indexserver import IndexBehaviour, LocalIndex, serve_index
from tests.test_installers import RELAX
from tests.test_understandings import add_rules, register

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}
DEADLINE_SECONDS = 60
WHEEL = "mtsv_beta-1.0-py3-none-any.whl"


@contextmanager
def synced_with_relaxed(tmp_path: Path) -> Iterator[tuple[LocalIndex, Storage]]:
    """Sync mtsv-beta 1.0 (alpha below 2) and mtsv-alpha 2.0 from a local index; register the
    understanding ``relaxed``, with no rules yet, in the meta repository."""
    archives = tmp_path / "archives"
    archives.mkdir()
    build_wheel(archives, "mtsv-alpha", "2.0")
    build_wheel(archives, "mtsv-beta", "1.0", requires_dist=["mtsv-alpha<2"])
    with serve_index(archives, IndexBehaviour(pep658=False)) as index:
        assert main(["init", str(tmp_path / "meta"), "--source", index.simple_url]) == 0
        assert main(["sync", "--all", "--repo", str(tmp_path / "meta")]) == 0
        meta = Storage(tmp_path / "meta")
        register(meta, "relaxed", ".", "understandings/relaxed")
        yield index, meta


def test_a_page_answers_while_its_rewritten_wheel_is_prepared_and_lists_it_once_ready(
    tmp_path: Path,
) -> None:
    with synced_with_relaxed(tmp_path) as (index, meta):
        add_rules(meta, "understandings/relaxed", "mtsv-beta", RELAX)
        # The source holds the wheel's download until released: the page must not wait on it.
        index.behaviour.faults[f"/files/{WHEEL}"] = ["hold"]
        # offline: no pull-through thread of its own in this process
        client = AsgiClient(create_app(meta.path, offline=True))
        page = client.get("/u/relaxed/simple/mtsv-beta/", headers=JSON)
        assert page.status_code == 200
        assert page.json()["files"] == []
        assert page.headers["cache-control"] == "public, max-age=10"
        assert page.headers["etag"].endswith('-without-1"')
        index.release.set()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not (ready := client.get("/u/relaxed/simple/mtsv-beta/", headers=JSON)).json()[
            "files"
        ]:
            assert time.monotonic() < deadline, "the rewritten wheel was never prepared"
            time.sleep(0.05)
        (wheel,) = ready.json()["files"]
        assert ready.headers["etag"] != page.headers["etag"]
        served = client.get(wheel["url"]).content
        assert hashlib.sha256(served).hexdigest() == wheel["hashes"]["sha256"]
        # Ready now: pages and the file come from disk, never from the source again.
        downloads = len(index.requests)
        for _ in range(3):
            assert client.get("/u/relaxed/simple/mtsv-beta/", headers=JSON).json() == ready.json()
        assert client.get(wheel["url"]).content == served
        assert len(index.requests) == downloads


def test_a_new_understanding_state_gets_its_wheels_rewritten_before_any_page_asks(
    tmp_path: Path,
) -> None:
    with synced_with_relaxed(tmp_path) as (index, meta):
        arguments = ["--repo", str(meta.path), "--offline", "--quiet", "--fetch-interval", "0.2"]
        with running_server(arguments) as server:

            def downloads() -> int:
                """Return how often the whole wheel was fetched (sync read it by ranges)."""
                requests = list(index.requests)
                return sum(
                    path == f"/files/{WHEEL}" and not byte_range for path, byte_range in requests
                )

            assert downloads() == 0  # the understanding changes nothing yet
            add_rules(meta, "understandings/relaxed", "mtsv-beta", RELAX)
            # The rule's state is served: its wheel is rewritten with no page asking for it.
            poll_until(lambda: downloads() == 1, "the rewritten wheel was prepared")
            page = httpx.get(f"{server.url}/u/relaxed/simple/mtsv-beta/", headers=JSON)
            assert page.status_code == 200
            assert len(page.json()["files"]) == 1
            assert not page.headers["etag"].endswith('-without-1"')
            assert downloads() == 1
