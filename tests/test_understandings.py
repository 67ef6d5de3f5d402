"""Understandings on the read API: registered, mirrored, layered and pinned."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from metasrv.http.app import create_app
from metasrv.names import normalize_name
from metasrv.repo import tomlcodec
from metasrv.repo.storage import CommitId, Storage
from metasrv.understandings.rules import Registration, rule_path
from tests.builders import allow_repositories
from tests.conftest import AsgiClient

CAP_WERKZEUG = {
    "id": "cap-werkzeug",
    "versions": ">=2.0,<2.1",
    "replace": ["Werkzeug>=2.0,<2.1"],
    "reason": "Flask 2.0 breaks on Werkzeug 2.1",
}
RELAX_CLICK = {
    "id": "relax-click",
    "versions": "==1.1.4",
    "relax": ["click"],
    "reason": "Flask 1.1.4 works with click 8",
}


def rule_file(project: str, *rules: dict[str, Any]) -> bytes:
    return tomlcodec.dumps({"format": 1, "project": project, "rules": list(rules)})


def register(storage: Storage, name: str, repository: str, folder: str) -> CommitId:
    registration = Registration(name, f"{name} sample", repository, "main", folder)
    path = f"understandings/{name}.toml"
    commit_id = storage.commit("main", {path: tomlcodec.dumps(registration.to_toml())}, "register")
    assert commit_id is not None
    return commit_id


def add_rules(storage: Storage, folder: str, project: str, *rules: dict[str, Any]) -> CommitId:
    path = rule_path(folder, normalize_name(project))
    commit_id = storage.commit("main", {path: rule_file(project, *rules)}, "rules")
    assert commit_id is not None
    return commit_id


@pytest.fixture
def embedded(storage: Storage) -> Storage:
    """Register an understanding whose rules live in the meta repository itself."""
    register(storage, "pallets", ".", "understandings/pallets")
    add_rules(storage, "understandings/pallets", "Flask", RELAX_CLICK)
    return storage


def test_a_client_that_opts_in_gets_patched_fields_with_provenance(
    client: AsgiClient, embedded: Storage
) -> None:
    head = embedded.resolve(None)
    plain = client.get("/v1/projects/flask/1.1.4").json()
    assert plain["requires-dist"] == ["Werkzeug<2.0", "click<8.0"]
    body = client.get("/v1/projects/flask/1.1.4?understanding=pallets").json()
    assert body["requires-dist"] == ["Werkzeug<2.0", "click"]
    assert body["original"]["requires-dist"] == ["Werkzeug<2.0", "click<8.0"]
    assert body["patches"] == [
        {
            "field": "requires-dist",
            "dependency": "click",
            "before": "click<8.0",
            "after": "click",
            "understanding": "pallets",
            "commit": head,
            "file": "understandings/pallets/fl/b8/flask.toml",
            "rule": "relax-click",
            "reason": "Flask 1.1.4 works with click 8",
        }
    ]
    assert body["understandings"] == [{"name": "pallets", "commit": head}]
    assert body["at"] == head
    untouched = client.get("/v1/projects/flask/2.0.0?understanding=pallets").json()
    assert untouched["patches"] == []
    assert untouched["requires-dist"] == untouched["original"]["requires-dist"]


def test_a_rule_added_after_a_pinned_commit_is_absent_at_it(
    client: AsgiClient, embedded: Storage
) -> None:
    before = embedded.resolve(None)
    add_rules(embedded, "understandings/pallets", "Flask", RELAX_CLICK, CAP_WERKZEUG)
    now = client.get("/v1/projects/flask/2.0.0?understanding=pallets").json()
    assert now["requires-dist"] == ["Werkzeug<2.1,>=2.0"]
    pinned = client.get(f"/v1/projects/flask/2.0.0?understanding=pallets@{before}")
    assert pinned.json()["requires-dist"] == ["Werkzeug>=2.0"]
    assert pinned.json()["understandings"] == [{"name": "pallets", "commit": before}]
    assert pinned.headers["cache-control"] == "public, max-age=10"
    fully_pinned = client.get(
        f"/v1/projects/flask/2.0.0?at={before}&understanding=pallets@{before}"
    )
    assert fully_pinned.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.fixture
def external(tmp_path: Path, storage: Storage) -> Storage:
    """Register an understanding kept in a repository of its own, on disk."""
    repository = Storage.init(tmp_path / "audit")
    add_rules(repository, "", "Flask", CAP_WERKZEUG)
    allow_repositories(storage, "https://", str(tmp_path))
    register(storage, "audit", str(tmp_path / "audit"), "")
    return repository


def test_an_external_understanding_is_mirrored_and_fetched_on_a_new_pin(
    storage: Storage, external: Storage, tmp_path: Path
) -> None:
    client = AsgiClient(
        create_app(storage.path, mirrors=tmp_path / "mirrors", pin_fetch_interval=0)
    )
    first = client.get("/v1/projects/flask/2.0.0?understanding=audit").json()
    assert first["requires-dist"] == ["Werkzeug<2.1,>=2.0"]
    assert (tmp_path / "mirrors" / "audit.git").is_dir()
    newer = add_rules(external, "", "Flask", CAP_WERKZEUG, {**RELAX_CLICK, "versions": "<1.2"})
    pinned = client.get(f"/v1/projects/flask/1.1.4?understanding=audit@{newer}").json()
    assert pinned["requires-dist"] == ["Werkzeug<2.0", "click"]
    assert pinned["understandings"] == [{"name": "audit", "commit": newer}]


def test_a_failed_fetch_keeps_serving_the_last_good_mirror_and_says_so(
    storage: Storage, external: Storage, tmp_path: Path
) -> None:
    client = AsgiClient(
        create_app(storage.path, mirrors=tmp_path / "mirrors", pin_fetch_interval=0)
    )
    assert client.get("/v1/projects/flask/2.0.0?understanding=audit").status_code == 200
    shutil.rmtree(tmp_path / "audit")
    missing = client.get(f"/v1/projects/flask/2.0.0?understanding=audit@{'a' * 40}")
    # The commit may well exist where the mirror cannot reach now: not a 404.
    assert missing.status_code == 503
    assert "last fetch failed" in missing.json()["error"]
    status = client.get("/v1/understandings/audit").json()
    assert status["fetch-error"] is not None
    assert "does not appear to be a git repository" in status["fetch-error"]
    still = client.get("/v1/projects/flask/2.0.0?understanding=audit").json()
    assert still["requires-dist"] == ["Werkzeug<2.1,>=2.0"]


def test_understandings_combine_in_client_order_and_report_conflicts(
    storage: Storage, embedded: Storage, external: Storage, tmp_path: Path
) -> None:
    add_rules(
        storage,
        "understandings/pallets",
        "Flask",
        {**CAP_WERKZEUG, "replace": ["Werkzeug>=2.0,<4"], "reason": "works"},
    )
    client = AsgiClient(create_app(storage.path, mirrors=tmp_path / "mirrors"))
    audit_last = client.get("/v1/projects/flask/2.0.0?understanding=pallets,audit").json()
    assert audit_last["requires-dist"] == ["Werkzeug<2.1,>=2.0"]
    assert audit_last["conflicts"] == [
        {
            "field": "requires-dist",
            "dependency": "werkzeug",
            "understandings": ["pallets", "audit"],
            "winner": "audit",
        }
    ]
    assert [u["name"] for u in audit_last["understandings"]] == ["pallets", "audit"]
    pallets_last = client.get("/v1/projects/flask/2.0.0?understanding=audit,pallets").json()
    assert pallets_last["requires-dist"] == ["Werkzeug<4,>=2.0"]


def test_the_server_says_where_a_write_goes(client: AsgiClient, embedded: Storage) -> None:
    listing = client.get("/v1/understandings").json()["understandings"]
    assert [u["name"] for u in listing] == ["pallets"]
    assert listing[0]["head"] == embedded.resolve(None)
    body = client.get("/v1/understandings/pallets?project=FLASK").json()
    assert body["write"] == {
        "repository": ".",
        "branch": "main",
        "path": "understandings/pallets/fl/b8/flask.toml",
    }


def test_a_broken_file_breaks_only_its_understanding(
    storage: Storage, embedded: Storage, external: Storage, tmp_path: Path
) -> None:
    storage.commit(
        "main", {rule_path("understandings/pallets", normalize_name("flask")): b"format = ["}, "x"
    )
    client = AsgiClient(create_app(storage.path, mirrors=tmp_path / "mirrors"))
    broken = client.get("/v1/projects/flask/2.0.0?understanding=pallets")
    assert broken.status_code == 422
    assert (
        "pallets:understandings/pallets/fl/b8/flask.toml:1: invalid TOML" in broken.json()["error"]
    )
    assert client.get("/v1/projects/flask/2.0.0?understanding=audit").status_code == 200
    assert client.get("/v1/projects/flask/2.0.0").status_code == 200


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("understanding=nope", 404, "unknown understanding 'nope'"),
        ("understanding=pallets@" + "0" * 40, 404, "unknown ref"),
        ("understanding=pallets@HEAD~1", 400, "invalid ref"),
        ("understanding=pallets,pallets", 400, "listed twice"),
        ("understanding=", 400, "invalid understanding list"),
        ("understanding=pallets,", 400, "invalid understanding list"),
        ("understanding=Bad%20Name", 400, "invalid understanding name"),
        ("understanding=" + ",".join(f"u{i}" for i in range(20)), 400, "at most 16"),
    ],
)
def test_bad_understanding_lists_are_4xx(
    client: AsgiClient, embedded: Storage, query: str, status: int, message: str
) -> None:
    response = client.get(f"/v1/projects/flask/2.0.0?{query}")
    assert response.status_code == status
    assert message in response.json()["error"]


def test_the_versions_list_shows_an_understandings_yanks(
    client: AsgiClient, embedded: Storage
) -> None:
    add_rules(
        embedded,
        "understandings/pallets",
        "Flask",
        RELAX_CLICK,
        {"id": "bad", "versions": "==2.0.0", "yank": "broken", "reason": "it breaks"},
    )
    plain = client.get("/v1/projects/flask").json()
    patched = client.get("/v1/projects/flask?understanding=pallets").json()
    assert [v["yanked"] for v in plain["versions"]] == [False, False]
    assert [v["yanked"] for v in patched["versions"]] == [False, "broken"]
    assert patched["understandings"] == [{"name": "pallets", "commit": embedded.resolve(None)}]


@pytest.mark.parametrize("view", ["/u/pallets", "/cooldown/7d"])
def test_a_page_with_understandings_or_a_cooldown_is_not_one_of_the_project_file_alone(
    client: AsgiClient, embedded: Storage, view: str
) -> None:
    # The plain page names no commit and stands for Werkzeug's file alone; in these views
    # a rule added later (or time) changes the page while the file stays the same.
    plain = client.get("/simple/werkzeug/")
    before = client.get(f"{view}/simple/werkzeug/")
    assert plain.headers["etag"].startswith('"file-')
    assert not before.headers["etag"].startswith('"file-')
    yank = {"id": "no-200", "versions": "==2.0.0", "yank": "broken", "reason": "it breaks"}
    add_rules(embedded, "understandings/pallets", "Werkzeug", yank)
    again = client.get(
        f"{view}/simple/werkzeug/", headers={"If-None-Match": before.headers["etag"]}
    )
    assert again.status_code == 200
    if view == "/u/pallets":
        assert 'data-yanked="broken"' in again.text
    assert client.get("/simple/werkzeug/").headers["etag"] == plain.headers["etag"]
