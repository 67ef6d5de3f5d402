from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

import metasrv
from metasrv.cli.main import main
from metasrv.http.app import create_app
from metasrv.repo.storage import Storage
from tests.builders import commit_projects, make_project
from tests.conftest import AsgiClient
from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS
from tests.test_understandings import RELAX_CLICK, add_rules, register


def test_init_creates_a_committed_meta_repository_with_a_clean_work_tree(tmp_path: Path) -> None:
    path = tmp_path / "meta"
    assert main(["init", str(path), "--source", "https://index.test/simple/"]) == 0
    storage = Storage(path)
    commit_id = storage.resolve(None)
    assert storage.read(commit_id, "metasrv.toml") == (
        b'format = 1\n\n[source]\nurl = "https://index.test/simple/"\n'
    )
    for folder in ("data", "understandings", "markers"):
        assert storage.read(commit_id, f"{folder}/README.md") is not None
    status = subprocess.run(
        ["git", "status", "--porcelain"],
        cwd=path,
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_DEADLINE_SECONDS,
    )
    assert status.stdout == ""
    # Made at once: on the server's first pulls, each would cost a folder while clients wait.
    fan_out = {p.name for p in (path / ".git" / "objects").iterdir() if len(p.name) == 2}
    assert fan_out == {f"{byte:02x}" for byte in range(256)}


def test_init_refuses_a_folder_that_is_not_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["init", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error == f"metasrv: error: {tmp_path} exists and is not empty\n"


def test_show_prints_a_project_and_a_release(
    storage: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "FLASK", "--repo", str(storage.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Flask (flask) at ")
    assert [line.split()[0] for line in lines[1:]] == ["1.1.4", "2.0.0"]
    assert main(["show", "flask", "1.1.4", "--repo", str(storage.path)]) == 0
    out = capsys.readouterr().out
    assert "requires-dist:\n  Werkzeug<2.0\n  click<8.0\n" in out


def test_show_json_matches_the_read_api(
    storage: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    old = storage.resolve(None)
    commit_projects(storage, make_project("Flask", ["3.0"]))
    assert main(["show", "flask", "2.0", "--repo", str(storage.path), "--at", old, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (
        document
        == AsgiClient(create_app(storage.path)).get(f"/v1/projects/flask/2.0?at={old}").json()
    )
    assert document["at"] == old
    assert document["version"] == "2.0.0"
    assert document["requires-dist"] == ["Werkzeug>=2.0"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "nope"], "unknown project 'nope'"),
        (["show", "flask", "9"], "unknown version '9' of 'Flask'"),
        (["show", "fl@sk"], "invalid project name"),
        (["show", "flask", "--at", "HEAD~1"], "invalid ref"),
        (["show"], "the following arguments are required: project"),
        (["frobnicate"], "invalid choice"),
        (["serve", "--port", "99999"], "is not a TCP port"),
        (["serve", "--fetch-interval", "0"], "--fetch-interval must be positive"),
        (["sync", "flask", "--timeout", "0"], "--timeout must be positive"),
        (["sync", "flask", "--timeout", "-1"], "--timeout must be positive"),
        (["sync", "flask", "--retries", "-1"], "--retries must be 0 or more"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(
    storage: Storage, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert (
        main(
            [*argv, "--repo", str(storage.path)]
            if argv[0] in ("show", "sync") and len(argv) > 1
            else argv
        )
        == 2
    )
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert message in error


def test_a_folder_that_is_not_a_repository_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "flask", "--repo", str(tmp_path)]) == 2
    assert "is not a git repository" in capsys.readouterr().err


def test_show_applies_understandings_as_the_api_does(
    storage: Storage, capsys: pytest.CaptureFixture[str]
) -> None:
    register(storage, "pallets", ".", "understandings/pallets")
    add_rules(storage, "understandings/pallets", "Flask", RELAX_CLICK)
    repo = ["--repo", str(storage.path)]
    assert main(["show", "flask", "1.1.4", "--understanding", "pallets", *repo]) == 0
    out = capsys.readouterr().out
    assert "requires-dist:\n  Werkzeug<2.0\n  click\n" in out
    assert "patched by pallets (relax-click): requires-dist 'click<8.0' -> 'click'" in out
    assert main(["show", "flask", "--understanding", "nope", *repo]) == 2
    assert "unknown understanding 'nope'" in capsys.readouterr().err


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"metasrv {metasrv.__version__}\n"
    assert metasrv.__version__ == importlib.metadata.version("metasrv")


def test_help_is_for_users_and_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    assert "serve it to pip, uv, Poetry, PDM" in top
    assert "argparse subcommands" not in top
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    serve = " ".join(capsys.readouterr().out.split())
    assert "address to listen on (default: 127.0.0.1)" in serve
    assert "TCP port to listen on (default: 8000)" in serve


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["init"], "a README in data/, understandings/ and markers/"),
        (["serve"], "on http://127.0.0.1:8000 by default"),
        (["sync"], "commit on the checked-out branch every --checkpoint projects"),
        (["show"], "as the JSON API answers them"),
        (["build-metadata"], "defaults: 120 s wall and CPU time, 4096 MB"),
        (["understanding"], "/u/NAME/simple/ or ?understanding=NAME"),
        (["understanding", "add"], "understandings/NAME.toml"),
        (["override"], "nothing is pushed"),
        (["markers"], "resolve for machines it is not running on"),
        (["markers", "generate"], "markers/sets/NAME.toml"),
        (["check"], "print each problem as file:line"),
    ],
)
def test_each_subcommand_help_opens_with_a_description_for_users(
    command: list[str],
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per paragraph: no hyphen broken by wrapping
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    paragraphs = capsys.readouterr().out.split("\n\n")
    # usage, then the description, then the arguments
    assert paragraphs[0].startswith(f"usage: metasrv {' '.join(command)}")
    description = paragraphs[1]
    assert not description.startswith(("positional arguments", "options"))
    assert says in description
    assert len(description.split()) >= 30


def test_serve_refuses_a_git_repository_that_is_no_meta_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = Storage.init(tmp_path / "plain")
    plain.commit(plain.head_branch(), {"README.md": b"not metasrv\n"}, "start")
    assert main(["serve", "--repo", str(tmp_path / "plain"), "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "is not a meta repository (no metasrv.toml)" in error


def test_importing_the_module_that_python_m_runs_runs_nothing() -> None:
    # multiprocessing's spawn imports the parent's __main__ module in each child.
    completed = subprocess.run(
        [sys.executable, "-c", "import metasrv.__main__; print('imported')"],
        capture_output=True,
        text=True,
        check=False,
        timeout=SUBPROCESS_DEADLINE_SECONDS,
    )
    assert (completed.returncode, completed.stdout, completed.stderr) == (0, "imported\n", "")
