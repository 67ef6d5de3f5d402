"""A real ``metasrv serve`` process on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pygit2
import pytest

from metasrv.repo.storage import Storage
from tests.builders import commit_projects, make_project
from tests.conftest import STARTUP_DEADLINE_SECONDS, RunningServer, running_server
from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS

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


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bad_metasrv_toml_is_one_line_and_exit_2_whatever_the_workers(
    storage: Storage, workers: str
) -> None:
    storage.commit(
        storage.head_branch(), {"metasrv.toml": b"[pull-through]\nrefresh = -1\n"}, "bad config"
    )
    # A new session, so a failure (workers restarted forever) can end the whole group.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metasrv",
            "serve",
            "--port",
            "0",
            "--workers",
            workers,
            "--repo",
            str(storage.path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, error = process.communicate(timeout=SUBPROCESS_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired as timeout:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(
            f"serve --workers {workers} did not exit on a bad metasrv.toml"
        ) from timeout
    assert process.returncode == 2
    assert error.count("\n") == 1, error
    assert "metasrv.toml" in error
    assert "Traceback" not in error


def test_a_percent_encoded_newline_in_a_path_cannot_forge_an_access_log_line(
    served: RunningServer,
) -> None:
    forged = "GET /forged 200 1.0 ms"
    response = httpx.get(f"{served.url}/v1/projects/nope%0a{forged.replace(' ', '%20')}")
    assert response.status_code in (400, 404)
    line = served.wait_for_line("/v1/projects/nope")
    assert "%0a" in line
    assert not any(logged.startswith(forged) for logged in served.lines)
