"""The checkout after a writer died mid-commit: every crash state the journal can be left in."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest

from metasrv.repo import worktree
from metasrv.repo.storage import Storage
from tests.builders import git

OLD: dict[str, bytes | None] = {"data/a.toml": b"a = 1\n", "data/b.toml": b"b = 1\n"}
NEW: dict[str, bytes | None] = {"data/a.toml": b"a = 2\n", "data/b.toml": None, "data/c.toml": b"c"}


@pytest.fixture
def checkout(tmp_path: Path) -> tuple[Storage, str, str]:
    """Return a checked-out repository at OLD, and the commit NEW would make (not yet on main)."""
    storage = Storage.init(tmp_path / "meta")
    old = storage.commit("main", OLD, "old")
    storage.checkout_head()
    assert old is not None
    # The commit the dying writer makes, built aside on another branch from the same parent.
    new = storage.commit("aside", NEW, "new", start_point=old)
    assert new is not None
    return storage, old, new


# A writer that kills itself with SIGKILL just before, or just after, it moves the branch.
_DYING_WRITER = """
import os, signal, sys
import pygit2
from metasrv.repo import worktree
path, old, new, ref_moved = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
repo = pygit2.Repository(path)
def move_ref_and_die():
    if ref_moved:
        repo.references.create("refs/heads/main", pygit2.Oid(hex=new), force=True)
    os.kill(os.getpid(), signal.SIGKILL)
paths = ["data/a.toml", "data/b.toml", "data/c.toml"]
worktree.follow(
    repo, branch="main", old_commit=old, new_commit=new, paths=paths, move_ref=move_ref_and_die
)
"""


def _die_during_follow(storage: Storage, old: str, new: str, *, ref_moved: bool) -> None:
    """Leave the state a writer killed -9 inside ``worktree.follow`` leaves."""
    process = subprocess.run(
        [sys.executable, "-c", _DYING_WRITER, str(storage.path), old, new, str(int(ref_moved))],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert (storage.path / worktree.JOURNAL_NAME).exists()


@pytest.mark.parametrize("ref_moved", [False, True], ids=["before-the-ref-moved", "after"])
def test_the_next_writer_leaves_a_clean_checkout_after_a_crash(
    checkout: tuple[Storage, str, str], ref_moved: bool
) -> None:
    storage, old, new = checkout
    _die_during_follow(storage, old, new, ref_moved=ref_moved)
    assert storage.workdir is not None
    # In the crash state an operator's `git commit` commits the old tree or the one the writer
    # was committing: nothing else, so no committed data is lost.
    index_tree = git(storage.workdir, "write-tree").strip()
    assert index_tree == git(storage.workdir, "rev-parse", f"{new}^{{tree}}").strip()
    (storage.workdir / "data" / ".a.toml.metasrv-tmp").write_bytes(b"half")
    storage.recover()
    assert git(storage.workdir, "status", "--porcelain", "--untracked-files=all") == ""
    assert storage.resolve("main") == (new if ref_moved else old)
    assert not (storage.path / worktree.JOURNAL_NAME).exists()


def test_a_stale_ref_lock_left_by_a_killed_writer_does_not_stop_the_next(
    checkout: tuple[Storage, str, str],
) -> None:
    storage, old, new = checkout
    _die_during_follow(storage, old, new, ref_moved=False)
    (storage.path / "refs" / "heads" / "main.lock").write_text(new)
    assert storage.commit("main", {"data/d.toml": b"d = 1\n"}, "next") is not None
    assert storage.workdir is not None
    assert git(storage.workdir, "status", "--porcelain", "--untracked-files=all") == ""


def test_the_users_own_edits_survive_recovery(checkout: tuple[Storage, str, str]) -> None:
    storage, old, new = checkout
    _die_during_follow(storage, old, new, ref_moved=True)
    assert storage.workdir is not None
    (storage.workdir / "data" / "a.toml").write_bytes(b"a = 'mine'\n")
    storage.recover()
    assert (storage.workdir / "data" / "a.toml").read_bytes() == b"a = 'mine'\n"


def test_a_ref_that_fails_to_move_puts_the_checkout_back(
    checkout: tuple[Storage, str, str],
) -> None:
    storage, old, new = checkout
    assert storage.workdir is not None
    repo = pygit2.Repository(str(storage.path))

    def refuse() -> None:
        raise OSError("the ref's lock is taken")

    with pytest.raises(OSError, match="lock is taken"):
        # As a commit calls it: the paths mapped to the bytes the new commit holds there.
        worktree.follow(
            repo, branch="main", old_commit=old, new_commit=new, paths=NEW, move_ref=refuse
        )
    for path, content in OLD.items():
        assert (storage.workdir / path).read_bytes() == content
    assert not (storage.workdir / "data" / "c.toml").exists()
    assert git(storage.workdir, "status", "--porcelain") == ""
    assert not (storage.path / worktree.JOURNAL_NAME).exists()
