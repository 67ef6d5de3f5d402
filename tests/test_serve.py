"""A real ``metasrv serve`` process on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pygit2
import pytest

from metasrv.repo.storage import Storage
from tests.builders import commit_projects, make_project
from tests.conftest import STARTUP_DEADLINE_SECONDS, RunningServer, running_server

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_a_running_server_answers_and_serves_new_commits_without_restart(
    served: RunningServer, storage: Storage
) -> None:
    with httpx.Client(base_url=served.url) as http:
        first = http.get("/v1/projects/werkzeug/2.0.1")
        assert first.status_code == 200
        assert first.json()["at"] == storage.resolve(None)
        assert http.get("/v1/projects/werkzeug/3.0").status_code == 404
        new_commit = commit_projects(storage, make_project("Werkzeug", ["2.0.1", "3.0"]))
        second = http.get("/v1/projects/werkzeug/3.0")
        assert second.status_code == 200
        assert second.json()["at"] == new_commit


@pytest.mark.skipif(
    pygit2.discover_repository(str(PROJECT_ROOT)) is None, reason="not run from a git clone"
)
def test_serve_with_no_arguments_serves_this_repositorys_own_data() -> None:
    # Offline: nothing in the tests contacts PyPI, which this repository's metasrv.toml names.
    with (
        running_server(["--offline"], cwd=PROJECT_ROOT) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        root = http.get("/").json()
        assert root["source"] == "https://pypi.org/simple/"
        flask = http.get("/v1/projects/flask/2.0.0").json()
        assert flask["name"] == "Flask"
        assert any(r.startswith("Werkzeug") for r in flask["requires-dist"])


def test_workers_share_one_port_each_with_its_own_repository_handle(storage: Storage) -> None:
    with running_server(["--repo", str(storage.path), "--workers", "2"]) as server:
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
        while len(children.read_text().split()) < 2:
            assert time.monotonic() < deadline, "uvicorn did not start two workers"
            time.sleep(0.01)  # polling the process table, with a deadline
        with httpx.Client(base_url=server.url) as http:
            # The parent binds the port; it accepts once a worker listens.
            while _refused(http):
                assert time.monotonic() < deadline, "no worker listened"
                time.sleep(0.01)  # polling the port, with a deadline
            for _ in range(20):
                assert http.get("/v1/projects/flask/2.0.0").status_code == 200
            new_commit = commit_projects(storage, make_project("Flask", ["2.0.0", "3.0"]))
            # Whichever worker answers reads the new commit: none keeps a stale handle.
            for _ in range(20):
                assert http.get("/v1/projects/flask/3.0").json()["at"] == new_commit


def _refused(http: httpx.Client) -> bool:
    try:
        http.get("/")
    except httpx.ConnectError:
        return True
    return False
