"""`metasrv override` against a remote understanding: cloned and fetched by git under deadlines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from metasrv.cli.main import main
from metasrv.names import normalize_name
from metasrv.repo.storage import Storage
from metasrv.understandings.rules import rule_path
from tests.builders import git
from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS
from tests.gitremotes import hung_remote

RELAX_CLICK = ["flask", "--versions", "==1.1.4", "--relax", "click", "--reason", "works"]
# Far below the subprocess deadline: a hang would fail the test instead of stalling it.
GIT_TIMEOUT_SECONDS = 2


def register(storage: Storage, url: str) -> None:
    arguments = ["understanding", "add", "pallets", "--repository", url]
    assert main([*arguments, "--description", "d", "--repo", str(storage.path)]) == 0


def override(storage: Storage, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as a contributor would, in a process of its own."""
    command = [sys.executable, "-m", "metasrv", "override", "--understanding", "pallets"]
    command += ["--repo", str(storage.path), "--workdir", str(workdir), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=SUBPROCESS_DEADLINE_SECONDS, check=False
    )


def test_an_override_of_a_remote_that_never_answers_fails_in_one_line_at_its_deadline(
    storage: Storage, tmp_path: Path
) -> None:
    with hung_remote() as remote:
        register(storage, remote.url)
        timeout = ["--git-timeout", str(GIT_TIMEOUT_SECONDS)]
        completed = override(storage, tmp_path / "work", *RELAX_CLICK, *timeout)
        assert remote.held, "git never connected to the hung remote"
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.count("\n") == 1
    assert f"timed out after {GIT_TIMEOUT_SECONDS} s" in completed.stderr
    assert not (tmp_path / "work" / "pallets").exists()  # nothing half-cloned is left in place


def test_an_override_clones_a_url_then_fetches_it_for_the_next_one(
    storage: Storage, tmp_path: Path
) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    (upstream / "README.md").write_text("rules\n")
    git(upstream, "add", "README.md")
    git(upstream, "commit", "-q", "-m", "start")
    register(storage, upstream.as_uri())
    workdir = tmp_path / "work"
    first = override(storage, workdir, *RELAX_CLICK)
    assert first.returncode == 0, first.stderr
    # A commit upstream after the clone: the next override must start from it, so it fetched.
    (upstream / "NOTES.md").write_text("later\n")
    git(upstream, "add", "NOTES.md")
    git(upstream, "commit", "-q", "-m", "later")
    upstream_head = git(upstream, "rev-parse", "HEAD").strip()
    second = override(storage, workdir, *RELAX_CLICK, "--branch", "again")
    assert second.returncode == 0, second.stderr
    clone = Storage(workdir / "pallets")
    again = clone.resolve("again")
    assert clone.first_parent(again) == upstream_head
    assert clone.read(again, rule_path("", normalize_name("flask"))) is not None


def test_an_override_never_replaces_a_folder_that_is_not_its_clone(
    storage: Storage, tmp_path: Path
) -> None:
    register(storage, "https://example.invalid/rules.git")
    mine = tmp_path / "work" / "pallets"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the contributor's own\n")
    completed = override(storage, tmp_path / "work", *RELAX_CLICK)
    assert completed.returncode == 2
    assert "is not a clone of https://example.invalid/rules.git" in completed.stderr
    assert (mine / "notes.txt").read_text() == "the contributor's own\n"
