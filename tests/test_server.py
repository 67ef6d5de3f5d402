from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pygit2
import pytest

from metasrv.model import MetadataStatus, Project, Release
from metasrv.names import normalize_name, project_path
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from tests.builders import commit_projects, make_file, make_project
from tests.conftest import SIGNATURE, AsgiClient
from tests.deadlines import (
    SUBPROCESS_DEADLINE_SECONDS,
    THREAD_DEADLINE_SECONDS,
    BoundedThread,
    wait_for,
)


def test_the_root_names_the_source_branch_commit_and_endpoints(
    client: AsgiClient, storage: Storage
) -> None:
    body = client.get("/").json()
    assert body["at"] == storage.resolve(None)
    assert body["source"] == "https://index.test/simple/"
    assert body["branch"] == "main"
    assert body["endpoints"]["release"] == "/v1/projects/{name}/{version}"


def test_every_project_is_listed_with_its_registered_name(client: AsgiClient) -> None:
    body = client.get("/v1/projects").json()
    assert body["projects"] == [
        {"name": "click", "normalized-name": "click"},
        {"name": "Flask", "normalized-name": "flask"},
        {"name": "Werkzeug", "normalized-name": "werkzeug"},
    ]


@pytest.mark.parametrize("spelling", ["Flask", "flask", "FLASK", "fLaSk"])
def test_any_spelling_that_normalizes_the_same_finds_a_project(
    client: AsgiClient, spelling: str
) -> None:
    body = client.get(f"/v1/projects/{spelling}").json()
    assert body["name"] == "Flask"
    assert body["normalized-name"] == "flask"
    assert [v["version"] for v in body["versions"]] == ["1.1.4", "2.0.0"]
    assert body["versions"][0] == {
        "version": "1.1.4",
        "yanked": False,
        "requires-python": None,
        "files": 1,
    }


@pytest.mark.parametrize("spelling", ["2.0.0", "2.0", "2", "v2.0"])
def test_any_pep_440_equal_spelling_finds_a_release(client: AsgiClient, spelling: str) -> None:
    body = client.get(f"/v1/projects/flask/{spelling}").json()
    assert body["version"] == "2.0.0"
    assert body["requires-dist"] == ["Werkzeug>=2.0"]
    assert body["files"][0]["filename"] == "Flask-2.0.0-py3-none-any.whl"
    assert "metadata" not in body["files"][0]


def test_a_note_on_a_file_reads_as_a_status_not_an_error(
    client: AsgiClient, storage: Storage
) -> None:
    wheel = make_file("Flask-3.0-py3-none-any.whl", requires_dist=["Werkzeug>=3"])
    sdist = replace(
        make_file("flask-3.0.tar.gz", metadata=False),
        metadata_status=MetadataStatus.SKIPPED,
        metadata_reason="the release's wheels give its metadata",
    )
    flask = Project.create("Flask", [Release.from_files("3.0", (wheel, sdist))])
    commit_projects(storage, flask)
    files = {f["filename"]: f for f in client.get("/v1/projects/flask/3.0").json()["files"]}
    assert files["Flask-3.0-py3-none-any.whl"]["metadata-status"] == "known"
    assert files["Flask-3.0-py3-none-any.whl"]["metadata-reason"] is None
    assert files["flask-3.0.tar.gz"]["metadata-status"] == "skipped"
    assert files["flask-3.0.tar.gz"]["metadata-reason"] == "the release's wheels give its metadata"
    assert "metadata-error" not in files["flask-3.0.tar.gz"]


def test_a_format_1_file_is_served_with_its_error_read_as_a_status(
    client: AsgiClient, storage: Storage
) -> None:
    old = (
        'format = 1\nname = "Old"\n\n[[releases."1.0".files]]\nfilename = "old-1.0.tar.gz"\n'
        'url = "https://files.test/old-1.0.tar.gz"\nhashes = {}\n'
        'metadata-error = "fetch failed: HTTP 500 after 5 attempts"\n'
    )
    storage.commit("main", {f"data/{project_path(normalize_name('old'))}": old.encode()}, "old")
    dist_file = client.get("/v1/projects/old/1.0").json()["files"][0]
    assert dist_file["metadata-status"] == "fetch-failed"
    assert dist_file["metadata-reason"] == "HTTP 500 after 5 attempts"


def test_a_commit_made_while_serving_is_served_at_once(
    client: AsgiClient, storage: Storage
) -> None:
    assert client.get("/v1/projects/flask/3.0").status_code == 404
    new_commit = commit_projects(
        storage, make_project("Flask", {"2.0.0": ["Werkzeug>=2.0"], "3.0": []})
    )
    response = client.get("/v1/projects/flask/3.0")
    assert response.status_code == 200
    assert response.json()["at"] == new_commit


def test_at_pins_a_sha_a_branch_or_a_tag(client: AsgiClient, storage: Storage) -> None:
    first = storage.resolve(None)
    commit_projects(storage, make_project("Flask", ["2.0.0", "3.0"]))
    raw = pygit2.Repository(str(storage.path))
    raw.references.create("refs/tags/before", first)
    raw.references.create("refs/heads/old", first)
    for at in (first, first[:10], "before", "old"):
        response = client.get(f"/v1/projects/flask?at={at}")
        assert response.status_code == 200, at
        assert response.json()["at"] == first
        assert [v["version"] for v in response.json()["versions"]] == ["1.1.4", "2.0.0"]


def test_a_full_sha_is_cached_forever_and_a_moving_ref_briefly(
    client: AsgiClient, storage: Storage
) -> None:
    sha = storage.resolve(None)
    assert client.get(f"/v1/projects/flask?at={sha}").headers["cache-control"] == (
        "public, max-age=31536000, immutable"
    )
    assert (
        client.get(f"/v1/projects/flask?at={sha[:12]}").headers["cache-control"]
        == "public, max-age=10"
    )
    assert client.get("/v1/projects/flask").headers["cache-control"] == "public, max-age=10"


@pytest.mark.parametrize(
    "url", ["/", "/v1/projects", "/v1/projects/flask", "/v1/projects/flask/2.0"]
)
def test_a_client_holding_the_current_etag_gets_304(
    client: AsgiClient, storage: Storage, url: str
) -> None:
    first = client.get(url)
    etag = first.headers["etag"]
    assert etag.startswith('"')
    # A list (with or without spaces), a weak validator (RFC 9110: weak comparison) or any.
    for validator in (f'W/"other", {etag}', f'"other",{etag}', f"W/{etag}", "*"):
        again = client.get(url, headers={"If-None-Match": validator})
        assert again.status_code == 304, validator
        assert again.content == b""
    commit_projects(storage, make_project("newproject", ["1"]))
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 200


@pytest.mark.parametrize("url", ["/v1/projects/flask", "/v1/projects/flask/2.0"])
def test_reads_answer_get_and_head_and_refuse_other_methods(client: AsgiClient, url: str) -> None:
    head = client.request("HEAD", url)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["etag"] == client.get(url).headers["etag"]
    for method in ("POST", "PUT", "DELETE"):
        refused = client.request(method, url)
        assert refused.status_code == 405, method
        assert refused.json() == {"error": "Method Not Allowed", "status": 405}


def test_since_lists_projects_added_changed_and_removed(
    client: AsgiClient, storage: Storage
) -> None:
    first = storage.resolve(None)
    commit_projects(
        storage, make_project("Flask", ["2.0.0", "3.0"]), make_project("Jinja2", ["3.0"])
    )
    second = storage.commit("main", {f"data/{project_path(normalize_name('click'))}": None}, "drop")
    assert second is not None
    body = client.get(f"/v1/projects?since={first}").json()
    assert body["since"] == first
    assert body["projects"] == [
        {"name": "click", "normalized-name": "click", "change": "removed"},
        {"name": "Flask", "normalized-name": "flask", "change": "changed"},
        {"name": "Jinja2", "normalized-name": "jinja2", "change": "added"},
    ]
    assert client.get(f"/v1/projects?since={second}").json()["projects"] == []
    listing = client.get("/v1/projects").json()["projects"]
    assert [p["name"] for p in listing] == ["Flask", "Jinja2", "Werkzeug"]


def test_since_follows_new_data_and_not_other_commits(client: AsgiClient, storage: Storage) -> None:
    first = storage.resolve(None)
    assert client.get(f"/v1/projects?since={first}").json()["projects"] == []
    commit_projects(storage, make_project("Jinja2", ["3.0"]))
    added = client.get(f"/v1/projects?since={first}").json()["projects"]
    assert [p["name"] for p in added] == ["Jinja2"]
    storage.commit("main", {"markers/README.md": b"# markers\n"}, "a commit outside data/")
    again = client.get(f"/v1/projects?since={first}")
    assert again.json()["projects"] == added
    assert again.json()["at"] == storage.resolve(None)


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/v1/projects/nope", 404, "unknown project 'nope'"),
        ("/v1/projects/flask/9.9", 404, "unknown version '9.9' of 'Flask'"),
        ("/v1/projects/flask/not-a-version", 400, "invalid version"),
        ("/v1/projects/fl@sk", 400, "invalid project name"),
        ("/v1/projects/..%2F..%2Fetc%2Fpasswd", 404, "unknown path"),
        ("/v1/projects/..%2Fx", 400, "invalid project name '..'"),
        ("/v1/projects/fl%00sk", 400, "invalid project name"),
        ("/v1/projects/" + "a" * 10_000, 400, "longer than 200"),
        ("/v1/projects/flask?at=HEAD~1", 400, "invalid ref 'HEAD~1'"),
        ("/v1/projects/flask?at=main@%7Bupstream%7D", 400, "invalid ref"),
        ("/v1/projects/flask?at=a..b", 400, "invalid ref"),
        ("/v1/projects/flask?at=%00", 400, "invalid ref"),
        ("/v1/projects/flask?at=", 400, "'at' is empty"),
        ("/v1/projects/flask?at=" + "0" * 40, 404, "unknown ref"),
        ("/v1/projects/flask?at=deadbeefdeadbeef", 404, "unknown ref"),
        ("/v1/projects/flask?at=zz" + "g" * 38, 404, "unknown ref"),
        ("/v1/projects?since=HEAD~1", 400, "invalid ref"),
        ("/v1/projects?since=", 400, "'since' is empty"),
        ("/v1/nothing", 404, "unknown path"),
        ("/v1/projects/flask/2.0/extra", 404, "unknown path"),
    ],
)
def test_bad_input_gets_a_json_4xx_that_says_what_was_wrong(
    client: AsgiClient, url: str, status: int, message: str
) -> None:
    response = client.get(url)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    assert response.json()["status"] == status


def test_a_broken_project_file_is_a_4xx_naming_the_file(
    client: AsgiClient, storage: Storage
) -> None:
    storage.commit(
        "main", {f"data/{project_path(normalize_name('flask'))}": b"format = 1\nname = ["}, "x"
    )
    response = client.get("/v1/projects/flask")
    assert response.status_code == 422
    assert "data/fl/b8/flask.toml:2: invalid TOML" in response.json()["error"]


def test_a_commit_whose_data_folder_is_gone_lists_nothing(
    client: AsgiClient, storage: Storage
) -> None:
    raw = pygit2.Repository(str(storage.path))
    empty_tree = raw.TreeBuilder().write()
    commit_id = raw.create_commit(
        "refs/heads/empty",
        pygit2.Signature(*SIGNATURE),
        pygit2.Signature(*SIGNATURE),
        "e",
        empty_tree,
        [],
    )
    assert client.get(f"/v1/projects?at={commit_id}").json()["projects"] == []
    assert client.get(f"/v1/projects/flask?at={commit_id}").status_code == 404


def test_readers_see_whole_commits_while_a_writer_commits(
    client: AsgiClient, storage: Storage
) -> None:
    writer = Storage(storage.path)  # a handle of its own, as a separate sync process has
    reading = threading.Event()
    written: list[str] = []

    def write() -> None:
        wait_for(reading, "the first read")
        for index in range(30):
            versions = [f"1.{n}" for n in range(index % 7 + 1)]
            written.append(
                commit_projects(
                    writer, make_project("Flask", versions), make_project("click", versions)
                )
            )

    initial = storage.resolve(None)
    thread = BoundedThread(write, "writer")
    thread.start()
    catalog = Catalog(Storage(storage.path))
    seen: set[str] = set()
    deadline = time.monotonic() + THREAD_DEADLINE_SECONDS

    def read_whole_commit() -> str:
        body = client.get("/v1/projects/flask").json()
        expected = catalog.get_project(body["at"], "flask")
        assert [v["version"] for v in body["versions"]] == [
            r.version_text for r in expected.releases
        ]
        if body["at"] != initial:
            # The writer's commits give both projects the same versions: never a torn pair.
            click = client.get(f"/v1/projects/click?at={body['at']}").json()
            assert click["versions"] == body["versions"]
        return str(body["at"])

    seen.add(read_whole_commit())
    reading.set()
    while thread.is_alive() and time.monotonic() < deadline:
        seen.add(read_whole_commit())
    thread.join()
    # Once the writer is done, the next read serves its last commit, however the two interleaved.
    assert read_whole_commit() == written[-1]
    assert seen <= {initial, *written}


def test_a_serving_process_keeps_what_it_started_with_out_of_the_collector() -> None:
    """Full passes walked every import mid-request; startup's garbage is collected first."""
    probe = """
import gc, weakref
gc.disable()  # only the collections the probe makes
from metasrv.http.app import settle_collector
class Node: pass
node = Node(); node.cycle = node; gone = weakref.ref(node); del node
settle_collector()
gc.collect()
print(gc.get_freeze_count() > 1000, gc.get_threshold(), gone() is None)
"""
    assert _printed_by(probe) == "True (10000, 10, 10) True"


def test_each_serve_worker_settles_its_collector(storage: Storage) -> None:
    """``serve --workers`` builds each worker's app from the environment: it settles it too."""
    probe = """
import gc
from metasrv.http.app import create_app_from_environment
create_app_from_environment()
print(gc.get_freeze_count() > 1000, gc.get_threshold())
"""
    settings = {
        "REPO": str(storage.path),
        "FETCH_INTERVAL": "60",
        "GIT_TIMEOUT": "30",
        "HEADER_TIMEOUT": "10",
        "MAX_CONNECTIONS": "100",
        "OFFLINE": "1",
        "QUIET": "1",
    }
    environment = {f"METASRV_SERVE_{key}": value for key, value in settings.items()}
    assert _printed_by(probe, environment) == "True (10000, 10, 10)"


def _printed_by(probe: str, environment: dict[str, str] | None = None) -> str:
    """Return the first line a Python process of its own prints: the collector is per process."""
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_DEADLINE_SECONDS,
        env=os.environ | (environment or {}),
    )
    return result.stdout.split("\n")[0]
