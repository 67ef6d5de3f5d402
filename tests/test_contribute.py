"""The contributor's loop: register, write an override on a branch, check its effect."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasrv.cli.main import main
from metasrv.names import normalize_name
from metasrv.repo import tomlcodec
from metasrv.repo.storage import Storage
from metasrv.understandings.rules import RuleFile, rule_path
from tests.builders import git

RULE_PATH = rule_path("", normalize_name("flask"))


def register_pallets(storage: Storage, repository: Path) -> int:
    """Run `metasrv understanding add pallets` against ``repository``."""
    return main(
        [
            "understanding",
            "add",
            "pallets",
            "--repository",
            str(repository),
            "--description",
            "the pallets ecosystem",
            "--repo",
            str(storage.path),
        ]
    )


@pytest.fixture
def understanding(tmp_path: Path, storage: Storage) -> Path:
    """Return a checked-out understanding repository registered as 'pallets'."""
    path = tmp_path / "pallets"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("pallets understanding\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "start")
    assert register_pallets(storage, path) == 0
    return path


def override(storage: Storage, *args: str) -> int:
    return main(["override", "--understanding", "pallets", "--repo", str(storage.path), *args])


def test_registering_commits_a_registration_the_server_reads(
    storage: Storage, understanding: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = tomlcodec.loads(
        storage.read(storage.resolve(None), "understandings/pallets.toml") or b"", where="x"
    )
    assert document["repository"] == str(understanding)
    assert register_pallets(storage, understanding) == 2
    assert "registered already" in capsys.readouterr().err


def test_an_override_lands_on_a_new_branch_and_leaves_the_work_tree_alone(
    storage: Storage, understanding: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        override(
            storage,
            "flask",
            "--versions",
            "==1.1.4",
            "--relax",
            "click",
            "--reason",
            "works with click 8",
        )
        == 0
    )
    out = capsys.readouterr().out
    branch = "override/flask/relax-click-1-1-4"
    assert f"on branch {branch}" in out
    assert f"git -C {understanding} push origin {branch}" in out
    assert git(understanding, "status", "--porcelain") == ""
    assert git(understanding, "branch", "--show-current").strip() == "main"
    assert not (understanding / "fl").exists()
    written = Storage(understanding).read(Storage(understanding).resolve(branch), RULE_PATH)
    assert written is not None
    rules = RuleFile.from_toml(tomlcodec.loads(written, where="x"), "x")
    assert rules.project == "Flask"
    assert [(r.id, str(r.versions), r.relax, r.reason) for r in rules.rules] == [
        ("relax-click-1-1-4", "==1.1.4", ("click",), "works with click 8")
    ]


def test_a_second_override_merges_into_the_projects_file(
    storage: Storage, understanding: Path
) -> None:
    assert (
        override(storage, "flask", "--versions", "==1.1.4", "--relax", "click", "--reason", "a")
        == 0
    )
    git(understanding, "merge", "-q", "override/flask/relax-click-1-1-4")
    assert (
        override(
            storage,
            "Flask",
            "--versions",
            ">=2.0,<2.1",
            "--replace",
            "Werkzeug>=2.0,<2.1",
            "--reason",
            "b",
            "--branch",
            "cap",
        )
        == 0
    )
    written = Storage(understanding).read(Storage(understanding).resolve("cap"), RULE_PATH)
    rules = RuleFile.from_toml(tomlcodec.loads(written or b"", where="x"), "x")
    assert [r.reason for r in rules.rules] == ["a", "b"]
    # The file keeps the contributor's spelling, not packaging's normal form.
    assert 'versions = ">=2.0,<2.1"' in (written or b"").decode()
    assert '"Werkzeug>=2.0,<2.1",' in (written or b"").decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["flask", "--versions", "==9.9", "--relax", "click"], "select no release"),
        (["flask", "--versions", ">=1", "--relax", "click"], "no upper bound"),
        (["flask", "--versions", "==1.1.4", "--replace", "click>>8"], "Expected"),
        (["flask", "--versions", "nonsense", "--relax", "click"], "Invalid specifier"),
        (["nope", "--versions", "==1", "--relax", "click"], "unknown project 'nope'"),
        (["flask", "--versions", "==1.1.4"], "one of the arguments"),
    ],
)
def test_a_bad_override_is_one_line_exit_2_and_writes_nothing(
    storage: Storage,
    understanding: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    assert override(storage, *args, "--reason", "r") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert message in error
    assert git(understanding, "branch", "--list").split() == ["*", "main"]


def test_an_open_ended_override_is_refused_unless_it_says_so(
    storage: Storage, understanding: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_ended = ["flask", "--versions", ">=2", "--yank", "no", "--reason", "r"]
    assert override(storage, *open_ended, "--branch", "refused") == 2
    assert "open-ended" in capsys.readouterr().err
    assert git(understanding, "branch", "--list", "refused") == ""
    assert override(storage, *open_ended, "--branch", "allowed", "--open-ended") == 0
    written = Storage(understanding).read(Storage(understanding).resolve("allowed"), RULE_PATH)
    rules = RuleFile.from_toml(tomlcodec.loads(written or b"", where="x"), "x")
    assert [(str(r.versions), r.yank, r.open_ended) for r in rules.rules] == [(">=2", "no", True)]


def test_check_validates_and_prints_the_effective_change(
    storage: Storage, understanding: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        override(storage, "flask", "--versions", "==1.1.4", "--relax", "click", "--reason", "a")
        == 0
    )
    git(understanding, "checkout", "-q", "override/flask/relax-click-1-1-4")
    capsys.readouterr()
    assert main(["check", str(understanding), "--repo", str(storage.path), "--base", "main"]) == 0
    out = capsys.readouterr().out
    assert "effective change against main: 1 field(s)" in out
    assert "Flask 1.1.4: requires-dist ['click<8.0'] -> ['click']" in out


def test_check_reports_every_problem_as_file_and_line(
    storage: Storage, understanding: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = understanding / RULE_PATH
    target.parent.mkdir(parents=True)
    target.write_text(
        'format = 1\nproject = "Flask"\n\n[[rules]]\nid = "forever"\nversions = ">=1"\n'
        'yank = "x"\nreason = "r"\n\n[[rules]]\nid = "nothing"\nversions = "==9"\n'
        'yank = "y"\nreason = "r"\n'
    )
    broken = understanding / rule_path("", normalize_name("click"))
    broken.parent.mkdir(parents=True)
    broken.write_text("format = [\n")
    git(understanding, "add", ".")
    git(understanding, "commit", "-q", "-m", "bad")
    assert main(["check", str(understanding), "--repo", str(storage.path)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert any(
        e.startswith(f"{RULE_PATH}:5: rule 'forever': versions '>=1' have no upper") for e in errors
    )
    assert any(
        e.startswith(f"{RULE_PATH}:11: rule 'nothing': versions '==9' select no release")
        for e in errors
    )
    assert f"{rule_path('', normalize_name('click'))}:2: invalid TOML: Invalid value" in errors


def test_an_override_identical_to_a_rule_in_the_file_is_refused(
    storage: Storage, understanding: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    relax = ["flask", "--versions", "==1.1.4", "--relax", "click"]
    assert override(storage, *relax, "--reason", "a") == 0
    git(understanding, "merge", "-q", "override/flask/relax-click-1-1-4")
    capsys.readouterr()
    # Another id and reason do not make it another rule.
    assert override(storage, *relax, "--reason", "b", "--id", "again", "--branch", "again") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "already has this rule as 'relax-click-1-1-4'" in error
    assert git(understanding, "branch", "--list", "again") == ""
    # The same selection with another change is a rule of its own.
    other = ["flask", "--versions", "==1.1.4", "--relax", "werkzeug", "--reason", "c"]
    assert override(storage, *other) == 0
