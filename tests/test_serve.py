"""A real ``metasrv serve`` process on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import httpx
import pygit2
import pytest

from metasrv.repo.storage import Storage
from tests.builders import commit_projects, make_project
from tests.conftest import RunningServer, running_server

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
    with running_server([], cwd=PROJECT_ROOT) as server, httpx.Client(base_url=server.url) as http:
        root = http.get("/").json()
        assert root["source"] == "https://pypi.org/simple/"
        flask = http.get("/v1/projects/flask/2.0.0").json()
        assert flask["name"] == "Flask"
        assert any(r.startswith("Werkzeug") for r in flask["requires-dist"])
