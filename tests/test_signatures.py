"""Signed understandings: only commits an allowed signer signed are served."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from metasrv.http.app import create_app
from metasrv.repo import tomlcodec
from metasrv.repo.storage import CommitId, Storage
from metasrv.understandings.rules import Registration
from metasrv.understandings.signatures import SshSigner
from tests.builders import allow_repositories
from tests.conftest import AsgiClient, running_server
from tests.deadlines import BoundedThread, poll_until
from tests.signing import allowed_signers_line, git, git_commit, make_key
from tests.test_understandings import CAP_WERKZEUG, RELAX_CLICK, rule_file

FLASK_RULES = "fl/b8/flask.toml"
SIGNERS_PATH = "understandings/audit.allowed_signers"
POLL_DEADLINE_SECONDS = 30


class Signed:
    """A meta repository registering ``audit``, whose commits alice must sign."""

    def __init__(self, tmp_path: Path, meta: Storage) -> None:
        self.meta = meta
        self.alice = make_key(tmp_path / "keys", "alice")
        self.mallory = make_key(tmp_path / "keys", "mallory")
        self.repository = tmp_path / "audit"
        self.repository.mkdir()
        git(self.repository, "init", "-q", "-b", "main")
        self.mirrors = tmp_path / "mirrors"
        allow_repositories(meta, str(tmp_path))  # its repository is a local path
        registration = Registration(
            "audit", "audited", str(self.repository), "main", "", allowed_signers=SIGNERS_PATH
        )
        meta.commit(
            "main",
            {
                "understandings/audit.toml": tomlcodec.dumps(registration.to_toml()),
                SIGNERS_PATH: allowed_signers_line("alice@example.org", self.alice),
            },
            "register audit, signed by alice",
        )

    def commit(self, key: Path | None, *rules: dict[str, Any]) -> CommitId:
        """Commit Flask's rules to the understanding, signed with ``key`` when given."""
        return git_commit(self.repository, {FLASK_RULES: rule_file("Flask", *rules)}, key)

    def tampered(self, *rules: dict[str, Any]) -> CommitId:
        """Commit with alice's signature of other bytes: her key, but not this commit."""
        sign = SshSigner(str(self.alice))
        commit_id = Storage(self.repository).commit(
            "main",
            {FLASK_RULES: rule_file("Flask", *rules)},
            "rules",
            sign=lambda content: sign(content.replace(b"rules", b"other")),
        )
        assert commit_id is not None
        return commit_id

    def client(self) -> AsgiClient:
        """Return a client of a fresh server, which mirrors the understanding as it is now."""
        return AsgiClient(create_app(self.meta.path, mirrors=self.mirrors))


@pytest.fixture
def signed(tmp_path: Path, storage: Storage) -> Signed:
    return Signed(tmp_path, storage)


def test_a_head_an_allowed_signer_signed_is_served(signed: Signed) -> None:
    head = signed.commit(signed.alice, CAP_WERKZEUG)
    client = signed.client()
    body = client.get("/v1/projects/flask/2.0.0?understanding=audit").json()
    assert body["requires-dist"] == ["Werkzeug<2.1,>=2.0"]
    assert body["understandings"] == [{"name": "audit", "commit": head}]
    status = client.get("/v1/understandings/audit").json()
    assert status["head"] == head
    assert status["allowed-signers"] == SIGNERS_PATH
    assert status["refused"] == []


@pytest.mark.parametrize(
    ("signer", "reason"),
    [
        (None, "the commit is not signed"),
        ("mallory", "signed by a key that is not an allowed signer"),
        ("tampered", "the signature does not verify: "),
    ],
)
def test_a_head_that_does_not_verify_is_refused_while_the_last_verified_serves(
    signed: Signed, signer: str | None, reason: str
) -> None:
    good = signed.commit(signed.alice, CAP_WERKZEUG)
    if signer == "tampered":
        bad = signed.tampered(CAP_WERKZEUG, RELAX_CLICK)
    else:
        bad = signed.commit(signed.mallory if signer else None, CAP_WERKZEUG, RELAX_CLICK)
    client = signed.client()
    served = client.get("/v1/projects/flask/1.1.4?understanding=audit").json()
    assert served["requires-dist"] == ["Werkzeug<2.0", "click<8.0"]  # RELAX_CLICK not applied
    assert served["understandings"] == [{"name": "audit", "commit": good}]
    status = client.get("/v1/understandings/audit").json()
    assert status["head"] == good
    ((refused, why),) = [(r["commit"], r["reason"]) for r in status["refused"]]
    assert refused == bad
    assert why.startswith(reason)  # ssh-keygen's own words follow, where it gives any
    for url in (
        f"/v1/projects/flask/1.1.4?understanding=audit@{bad}",
        f"/u/audit@{bad}/simple/flask/",
    ):
        pinned = client.get(url)
        assert pinned.status_code == 403
        assert pinned.json()["error"] == f"understanding 'audit' commit {bad} is not served: {why}"
    assert client.get(f"/v1/projects/flask/1.1.4?understanding=audit@{good}").status_code == 200


def test_a_branch_rewritten_without_signatures_keeps_the_last_verified_head(
    signed: Signed,
) -> None:
    good = signed.commit(signed.alice, CAP_WERKZEUG)
    client = signed.client()
    assert client.get("/v1/understandings/audit").json()["head"] == good
    git(signed.repository, "checkout", "-q", "--orphan", "rewritten")
    forced = signed.commit(None, RELAX_CLICK)
    git(signed.repository, "branch", "-q", "-M", "rewritten", "main")
    # A pin the mirror has not seen makes it fetch the rewritten branch.
    assert client.get(f"/v1/projects/flask/2.0.0?understanding=audit@{forced}").status_code == 403
    status = client.get("/v1/understandings/audit").json()
    assert status["head"] == good
    assert status["refused"] == [{"commit": forced, "reason": "the commit is not signed"}]
    body = client.get("/v1/projects/flask/2.0.0?understanding=audit").json()
    assert body["requires-dist"] == ["Werkzeug<2.1,>=2.0"]


def test_an_understanding_with_no_verified_commit_is_a_502_that_says_why(signed: Signed) -> None:
    head = signed.commit(None, CAP_WERKZEUG)
    response = signed.client().get("/v1/projects/flask/2.0.0?understanding=audit")
    assert response.status_code == 502
    assert response.json()["error"] == (
        "understanding 'audit' has no commit signed by an allowed signer "
        f"(its head {head}: the commit is not signed)"
    )


def test_a_missing_allowed_signers_file_is_a_422(signed: Signed) -> None:
    signed.commit(signed.alice, CAP_WERKZEUG)
    signed.meta.commit("main", {SIGNERS_PATH: None}, "lose the signers")
    response = signed.client().get("/v1/projects/flask/2.0.0?understanding=audit")
    assert response.status_code == 422
    assert "allowed-signers file" in response.json()["error"]


def test_a_running_server_follows_the_branch_only_to_commits_that_verify(signed: Signed) -> None:
    good = signed.commit(signed.alice, CAP_WERKZEUG)
    arguments = ["--repo", str(signed.meta.path), "--mirrors", str(signed.mirrors)]
    with running_server([*arguments, "--fetch-interval", "0.2"]) as server:
        status_url = f"{server.url}/v1/understandings/audit"
        assert httpx.get(status_url).json()["head"] == good
        bad = signed.commit(None, CAP_WERKZEUG, RELAX_CLICK)
        status = poll(status_url, lambda body: bool(body["refused"]))
        assert status["head"] == good
        assert [r["commit"] for r in status["refused"]] == [bad]
        newer = signed.commit(signed.alice, RELAX_CLICK)
        status = poll(status_url, lambda body: body["head"] == newer)
        assert status["refused"] == []
        body = httpx.get(f"{server.url}/v1/projects/flask/1.1.4?understanding=audit").json()
        assert body["requires-dist"] == ["Werkzeug<2.0", "click"]


def poll(url: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Return the first JSON answer of ``url`` that ``done`` accepts, failing after a deadline."""
    deadline = time.monotonic() + POLL_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(url).json()
        if done(body):
            return body
        time.sleep(0.05)  # a poll interval, not synchronisation: the deadline decides
    raise AssertionError(f"{url} did not reach the expected state within {POLL_DEADLINE_SECONDS}s")


def test_without_ssh_keygen_nothing_is_served_and_nothing_is_remembered(
    signed: Signed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    head = signed.commit(signed.alice, CAP_WERKZEUG)
    client = signed.client()
    # git stays reachable (mirrors are cloned by the git CLI); ssh-keygen does not.
    tools = tmp_path / "no-tools"
    tools.mkdir()
    git_path = shutil.which("git")
    assert git_path is not None
    (tools / "git").symlink_to(git_path)
    with monkeypatch.context() as patched:
        patched.setenv("PATH", str(tools))
        response = client.get("/v1/projects/flask/2.0.0?understanding=audit")
    assert response.status_code == 502
    assert f"(its head {head}: cannot run ssh-keygen: " in response.json()["error"]
    again = client.get("/v1/projects/flask/2.0.0?understanding=audit")
    assert again.status_code == 200
    assert again.json()["understandings"] == [{"name": "audit", "commit": head}]


GATED_SSH_KEYGEN = """#!/bin/sh
# ssh-keygen, held while the gate is shut: the test sees a verification in progress.
touch "$METASRV_TEST_GATE/started"
while [ ! -e "$METASRV_TEST_GATE/open" ]; do sleep 0.02; done
exec {real} "$@"
"""


def test_a_pin_being_verified_leaves_every_other_request_answered(
    signed: Signed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    older = signed.commit(signed.alice, CAP_WERKZEUG)
    newer = signed.commit(signed.alice, RELAX_CLICK)
    real = shutil.which("ssh-keygen")
    assert real is not None
    tools, gate = tmp_path / "gated-tools", tmp_path / "gate"
    tools.mkdir()
    gate.mkdir()
    (tools / "ssh-keygen").write_text(GATED_SSH_KEYGEN.format(real=real))
    (tools / "ssh-keygen").chmod(0o755)
    (gate / "open").touch()
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    monkeypatch.setenv("METASRV_TEST_GATE", str(gate))
    arguments = ["--repo", str(signed.meta.path), "--mirrors", str(signed.mirrors)]
    with running_server(arguments) as server:
        assert poll(f"{server.url}/v1/understandings/audit", lambda b: b["head"] == newer)
        (gate / "open").unlink()
        (gate / "started").unlink()
        # The older commit was never verified: its pin runs ssh-keygen, which the gate holds.
        answers: list[httpx.Response] = []
        pinned_url = f"{server.url}/v1/projects/flask/1.1.4?understanding=audit@{older}"
        pinned = BoundedThread(lambda: answers.append(httpx.get(pinned_url, timeout=60)), "pin")
        pinned.start()
        poll_until((gate / "started").exists, "the pin's verification began")
        assert httpx.get(f"{server.url}/", timeout=10).status_code == 200
        assert answers == []  # still held
        (gate / "open").touch()
        pinned.join()
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["understandings"] == [{"name": "audit", "commit": older}]
