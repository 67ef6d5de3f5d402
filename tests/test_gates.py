"""Gates and cooldown views: what a view lists, and why the rest is hidden."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metasrv.cli.main import main
from metasrv.http.app import create_app
from metasrv.http.hotpath import ASGIApp
from metasrv.model import Project, Release
from metasrv.repo import tomlcodec
from metasrv.repo.storage import CommitId, Storage
from metasrv.understandings.rules import Registration
from tests.builders import add_marker_sets, commit_projects, create_meta_repository, make_file
from tests.conftest import AsgiClient
from tests.test_understandings import add_rules

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}
OLD = "2024-01-02T03:04:05Z"
BOTH = ["flask-1.0-py3-none-any.whl", "flask-2.0-py3-none-any.whl"]
APPROVE_2 = {"id": "reviewed-2", "versions": "==2.0", "approve": True, "reason": "diff read"}


def flask(uploaded: dict[str, str]) -> Project:
    """Return Flask with one wheel per version, uploaded at the given times."""
    releases = []
    for version, upload_time in uploaded.items():
        wheel = make_file(f"flask-{version}-py3-none-any.whl")
        releases.append(Release.from_files(version, (replace(wheel, upload_time=upload_time),)))
    return Project.create("Flask", releases)


def register_gate(storage: Storage, name: str = "notary") -> None:
    registration = Registration(name, "reviewed releases", ".", "main", f"gates/{name}", gate=True)
    storage.commit(
        "main", {f"understandings/{name}.toml": tomlcodec.dumps(registration.to_toml())}, "gate"
    )


def page(client: AsgiClient, url: str) -> dict[str, Any]:
    response = client.get(url, headers=JSON)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def filenames(document: dict[str, Any]) -> list[str]:
    return [f["filename"] for f in document["files"]]


@pytest.fixture
def young(tmp_path: Path) -> Storage:
    """Flask 1.0 uploaded long ago, 2.0 a day before the commit that records it."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return create_meta_repository(tmp_path / "meta", flask({"1.0": OLD, "2.0": yesterday}))


def test_a_gate_lists_only_what_it_approved_and_the_api_says_why(young: Storage) -> None:
    register_gate(young)
    add_rules(young, "gates/notary", "Flask", APPROVE_2)
    client = AsgiClient(_app(young))
    assert filenames(page(client, "/simple/flask/")) == BOTH
    gated = page(client, "/u/notary/simple/flask/")
    assert filenames(gated) == ["flask-2.0-py3-none-any.whl"]
    assert gated["versions"] == ["2.0"]
    hidden = client.get("/v1/projects/flask/1.0?understanding=notary").json()
    assert hidden["hidden"] == "not approved by the gate 'notary'"
    assert hidden["yanked"] is False  # hidden, not yanked
    assert hidden["files"][0]["hidden"] == "not approved by the gate 'notary'"
    approved = client.get("/v1/projects/flask/2.0?understanding=notary").json()
    assert approved["hidden"] is None
    assert [a["rule"] for a in approved["approvals"]] == ["reviewed-2"]
    versions = client.get("/v1/projects/flask?understanding=notary").json()["versions"]
    assert [(v["version"], v["hidden"]) for v in versions] == [
        ("1.0", "not approved by the gate 'notary'"),
        ("2.0", None),
    ]
    refused = client.get("/u/notary/files/flask/flask-1.0-py3-none-any.whl")
    assert refused.status_code == 404
    assert "hidden in this view: not approved by the gate 'notary'" in refused.json()["error"]


def test_a_project_the_gate_has_no_rules_for_is_hidden_whole(young: Storage) -> None:
    register_gate(young)
    client = AsgiClient(_app(young))
    gated = page(client, "/u/notary/simple/flask/")
    assert (gated["files"], gated["versions"]) == ([], [])
    versions = client.get("/v1/projects/flask?understanding=notary").json()["versions"]
    assert {v["hidden"] for v in versions} == {"not approved by the gate 'notary'"}


def test_an_approve_rule_outside_a_gate_hides_nothing(young: Storage) -> None:
    registration = Registration("plain", "not a gate", ".", "main", "gates/plain")
    young.commit(
        "main", {"understandings/plain.toml": tomlcodec.dumps(registration.to_toml())}, "plain"
    )
    add_rules(young, "gates/plain", "Flask", APPROVE_2)
    assert len(page(AsgiClient(_app(young)), "/u/plain/simple/flask/")["files"]) == 2


def test_gates_combine_in_client_order_each_holding_back_what_it_did_not_approve(
    young: Storage,
) -> None:
    register_gate(young, "first")
    register_gate(young, "second")
    add_rules(young, "gates/first", "Flask", {**APPROVE_2, "versions": ">=1.0,<3"})
    add_rules(young, "gates/second", "Flask", APPROVE_2)
    client = AsgiClient(_app(young))
    assert filenames(page(client, "/u/first/simple/flask/")) == BOTH
    both = page(client, "/u/first,second/simple/flask/")
    assert filenames(both) == ["flask-2.0-py3-none-any.whl"]
    reason = client.get("/v1/projects/flask/1.0?understanding=first,second").json()["hidden"]
    assert reason == "not approved by the gate 'second'"


def test_a_cooldown_hides_young_files_measured_from_the_data_commit(young: Storage) -> None:
    client = AsgiClient(_app(young))
    cooled = page(client, "/cooldown/7d/simple/flask/")
    assert filenames(cooled) == ["flask-1.0-py3-none-any.whl"]
    assert filenames(page(client, "/cooldown/12h/simple/flask/")) == BOTH
    reason = client.get("/v1/projects/flask/2.0?cooldown=7d").json()["hidden"]
    assert reason.startswith("uploaded ")
    assert "less than 7d before the data commit" in reason
    # The same data recorded by a commit dated 30 days later: 2.0 is old enough there.
    later = _commit_same_tree_at(young, datetime.now(UTC) + timedelta(days=30))
    assert len(page(client, f"/at/{later}/cooldown/7d/simple/flask/")["files"]) == 2


def test_markers_annotate_the_cooled_down_release_not_the_plain_one(young: Storage) -> None:
    add_marker_sets(young, {"lin": "linux"})
    client = AsgiClient(_app(young))
    cooled = client.get("/v1/projects/flask/2.0?cooldown=7d").json()
    assert cooled["hidden"].startswith("uploaded ")
    annotated = client.get("/v1/projects/flask/2.0?cooldown=7d&markers=lin").json()
    assert annotated.get("hidden") == cooled["hidden"], annotated
    assert annotated["markers"]["set"] == "lin"
    assert "hidden" not in client.get("/v1/projects/flask/2.0?markers=lin").json()


def test_a_pinned_cooldown_view_gives_the_same_bytes_after_later_commits(young: Storage) -> None:
    register_gate(young)
    add_rules(young, "gates/notary", "Flask", APPROVE_2)
    pinned = young.resolve(None)
    client = AsgiClient(_app(young))
    urls = [
        f"/at/{pinned}/cooldown/7d/simple/flask/",
        f"/at/{pinned}/u/notary@{pinned}/cooldown/7d/simple/flask/",
    ]
    before = [client.get(url, headers=JSON) for url in urls]
    assert all(r.headers["cache-control"] == "public, max-age=31536000, immutable" for r in before)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    commit_projects(young, flask({"1.0": OLD, "2.0": OLD, "3.0": now}))
    add_rules(young, "gates/notary", "Flask", {**APPROVE_2, "versions": ">=1"})
    _commit_same_tree_at(young, datetime.now(UTC) + timedelta(days=30))
    after = [client.get(url, headers=JSON) for url in urls]
    assert [r.content for r in after] == [r.content for r in before]
    assert filenames(before[0].json()) == ["flask-1.0-py3-none-any.whl"]


def test_a_gate_in_the_view_lets_an_approved_young_release_through_a_cooldown(
    young: Storage,
) -> None:
    register_gate(young)
    add_rules(
        young, "gates/notary", "Flask", APPROVE_2, {**APPROVE_2, "id": "old", "versions": "==1.0"}
    )
    client = AsgiClient(_app(young))
    assert filenames(page(client, "/cooldown/7d/simple/flask/")) == ["flask-1.0-py3-none-any.whl"]
    assert filenames(page(client, "/u/notary/cooldown/7d/simple/flask/")) == BOTH


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/cooldown/7/simple/flask/", 400, "invalid cooldown '7'"),
        ("/cooldown/0d/simple/flask/", 400, "invalid cooldown '0d'"),
        ("/cooldown/99999d/simple/flask/", 400, "invalid cooldown"),
        ("/v1/projects/flask?cooldown=7w", 400, "invalid cooldown '7w'"),
    ],
)
def test_bad_cooldowns_are_400(young: Storage, url: str, status: int, message: str) -> None:
    response = AsgiClient(_app(young)).get(url)
    assert response.status_code == status
    assert message in response.json()["error"]


def _app(storage: Storage) -> ASGIApp:
    return create_app(storage.path, mirrors=storage.path / "mirrors")


def _commit_same_tree_at(storage: Storage, when: datetime) -> CommitId:
    """Commit the head's tree again with the git CLI, dated ``when``; return the new commit."""
    environment = {"GIT_COMMITTER_DATE": when.strftime("%Y-%m-%dT%H:%M:%S+0000")}
    git = ["git", "--git-dir", str(storage.path)]
    commit_id = subprocess.run(
        [*git, "commit-tree", "main^{tree}", "-p", "main", "-m", "later"],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    subprocess.run([*git, "update-ref", "refs/heads/main", commit_id], check=True, timeout=30)
    return CommitId(commit_id)


def test_show_prints_what_a_gate_and_a_cooldown_hide_and_approve(
    young: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    register_gate(young)
    add_rules(young, "gates/notary", "Flask", APPROVE_2)
    repo = ["--repo", str(young.path)]
    assert main(["show", "flask", *repo, "--understanding", "notary"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        "  1.0  1 file, hidden: not approved by the gate 'notary'",
        "  2.0  1 file",
    ]
    assert main(["show", "flask", "2.0", *repo, "--understanding", "notary"]) == 0
    release = capsys.readouterr().out
    assert "approved by notary (reviewed-2): flask-2.0-py3-none-any.whl; diff read\n" in release
    assert main(["show", "flask", "2.0", *repo, "--cooldown", "7d"]) == 0
    (file_line,) = [line for line in capsys.readouterr().out.splitlines() if ".whl" in line]
    assert "(hidden: uploaded " in file_line
