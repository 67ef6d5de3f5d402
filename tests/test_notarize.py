"""An auditor's loop: approve on a signed branch, check the signatures, serve what verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasrv.cli.main import main
from metasrv.http.app import create_app
from metasrv.repo import tomlcodec
from metasrv.repo.storage import Storage
from metasrv.understandings.rules import Registration
from tests.builders import allow_repositories
from tests.conftest import AsgiClient
from tests.signing import allowed_signers_line, git, git_commit, make_key

SIGNERS_PATH = "understandings/notary.allowed_signers"
JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}


class Notary:
    """A gate whose repository signs its commits with alice's key, as git is configured to."""

    def __init__(self, tmp_path: Path, meta: Storage) -> None:
        self.meta = meta
        self.key = make_key(tmp_path / "keys", "alice")
        self.repository = tmp_path / "notary"
        self.repository.mkdir()
        git(self.repository, "init", "-q", "-b", "main")
        self.start = git_commit(self.repository, {"README.md": b"notary\n"}, None)
        allow_repositories(meta, str(tmp_path))  # its repository is a local path
        for key, value in (
            ("commit.gpgsign", "true"),
            ("gpg.format", "ssh"),
            ("user.signingkey", str(self.key)),
        ):
            git(self.repository, "config", key, value)
        self.signers = tmp_path / "allowed_signers"
        self.signers.write_bytes(allowed_signers_line("alice@example.org", self.key))
        assert (
            register(
                "notary", self.repository, meta, "--gate", "--allowed-signers", str(self.signers)
            )
            == 0
        )

    def approve(self, *args: str) -> int:
        return main(["override", "--understanding", "notary", "--repo", str(self.meta.path), *args])

    def check(self) -> int:
        return main(
            [
                "check",
                str(self.repository),
                "--repo",
                str(self.meta.path),
                "--base",
                self.start,
                "--understanding",
                "notary",
            ]
        )


def register(name: str, repository: Path, meta: Storage, *options: str) -> int:
    """Run ``metasrv understanding add``."""
    return main(
        [
            "understanding",
            "add",
            name,
            "--repository",
            str(repository),
            "--description",
            "reviewed releases",
            "--repo",
            str(meta.path),
            *options,
        ]
    )


@pytest.fixture
def notary(tmp_path: Path, storage: Storage) -> Notary:
    return Notary(tmp_path, storage)


def test_an_approval_is_committed_signed_checked_and_served_through_the_gate(
    notary: Notary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    approved = notary.approve("flask", "--versions", "==2.0.0", "--approve", "--reason", "read")
    assert approved == 0
    output = capsys.readouterr().out
    assert f"signed with {notary.key}" in output
    branch = "override/flask/approve-flask-2-0-0"
    rules = git(notary.repository, "show", f"{branch}:fl/b8/flask.toml")
    assert "approve = true" in rules
    # git itself accepts the signature.
    verified = git(
        notary.repository,
        "-c",
        f"gpg.ssh.allowedSignersFile={notary.signers}",
        "verify-commit",
        branch,
    )
    assert verified == ""
    git(notary.repository, "merge", "-q", "--ff-only", branch)
    capsys.readouterr()
    assert notary.check() == 0
    assert "  Flask 2.0.0: approves Flask-2.0.0-py3-none-any.whl\n" in capsys.readouterr().out

    client = AsgiClient(create_app(notary.meta.path, mirrors=tmp_path / "mirrors"))
    page = client.get("/u/notary/simple/flask/", headers=JSON).json()
    assert [f["filename"] for f in page["files"]] == ["Flask-2.0.0-py3-none-any.whl"]


def test_check_reports_a_commit_that_would_not_be_served(
    notary: Notary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert notary.approve("flask", "--versions", "==2.0.0", "--approve", "--reason", "r") == 0
    git(notary.repository, "merge", "-q", "--ff-only", "override/flask/approve-flask-2-0-0")
    git(notary.repository, "config", "commit.gpgsign", "false")
    unsigned = git_commit(notary.repository, {"NOTES.md": b"unsigned\n"}, None)
    capsys.readouterr()
    assert notary.check() == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors == [f"commit {unsigned}: would not be served: the commit is not signed"]


def test_approve_is_refused_for_an_understanding_that_is_not_a_gate(
    notary: Notary, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = Registration("plain", "not a gate", str(notary.repository))
    notary.meta.commit(
        "main", {"understandings/plain.toml": tomlcodec.dumps(plain.to_toml())}, "plain"
    )
    arguments = ["flask", "--versions", "==2.0.0", "--approve", "--reason", "r"]
    assert (
        main(["override", "--understanding", "plain", "--repo", str(notary.meta.path), *arguments])
        == 2
    )
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("understanding 'plain' is not a gate, so --approve would change nothing")
    )


def test_registering_a_gate_commits_its_allowed_signers_beside_it(notary: Notary) -> None:
    head = notary.meta.resolve(None)
    registration = tomlcodec.loads(
        notary.meta.read(head, "understandings/notary.toml") or b"", where="registration"
    )
    assert registration["gate"] is True
    assert registration["allowed-signers"] == SIGNERS_PATH
    assert notary.meta.read(head, SIGNERS_PATH) == notary.signers.read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read --allowed-signers"),
        (b"", "is not an allowed_signers file"),
        (b"alice@example.org ssh-ed25519\n", "is not an allowed_signers file"),
    ],
)
def test_a_bad_allowed_signers_file_is_one_line_and_registers_nothing(
    notary: Notary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    message: str,
) -> None:
    signers = tmp_path / "bad_signers"
    if content is not None:
        signers.write_bytes(content)
    head = notary.meta.resolve(None)
    assert register("other", notary.repository, notary.meta, "--allowed-signers", str(signers)) == 2
    assert message in capsys.readouterr().err
    assert notary.meta.resolve(None) == head


def test_check_reports_an_approval_in_an_understanding_that_is_not_a_gate(
    notary: Notary, capsys: pytest.CaptureFixture[str]
) -> None:
    assert notary.approve("flask", "--versions", "==2.0.0", "--approve", "--reason", "r") == 0
    git(notary.repository, "merge", "-q", "--ff-only", "override/flask/approve-flask-2-0-0")
    assert register("plain", notary.repository, notary.meta) == 0
    capsys.readouterr()
    arguments = ["check", str(notary.repository), "--repo", str(notary.meta.path)]
    assert main([*arguments, "--understanding", "plain"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "fl/b8/flask.toml:5: rule 'approve-flask-2-0-0': approve changes nothing in an "
        "understanding that is not a gate"
    ]
    assert main([*arguments, "--understanding", "notary"]) == 0
