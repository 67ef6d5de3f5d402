"""A server's storage keeps the commit it served until a ref moves, however the ref moves."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pygit2
import pytest

from metasrv.repo.refwatch import RefWatch
from metasrv.repo.storage import Storage
from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS, BoundedThread


@pytest.fixture
def watched(tmp_path: Path) -> Storage:
    """Return a repository with one commit on main, opened as a server opens it."""
    Storage.init(tmp_path / "repo").commit("main", {"a.txt": b"1"}, "first")
    storage = Storage(tmp_path / "repo")
    storage.watch_refs()
    return storage


def _git(storage: Storage, *args: str) -> None:
    subprocess.run(
        ["git", "--git-dir", str(storage.path), *args],
        check=True,
        capture_output=True,
        timeout=SUBPROCESS_DEADLINE_SECONDS,
    )


def _commit(storage: Storage, branch: str, content: bytes) -> str:
    """Commit as another process would: through a handle of its own."""
    commit_id = Storage(storage.path).commit(branch, {"a.txt": content}, "change")
    assert commit_id is not None
    return commit_id


def test_a_commit_by_another_writer_is_served_at_once(watched: Storage) -> None:
    first = watched.resolve(None)
    assert watched.resolve(None) == first  # kept
    second = _commit(watched, "main", b"2")
    assert watched.resolve(None) == second
    third = _commit(watched, "main", b"3")
    assert watched.resolve(None) == third


def test_head_moved_to_another_branch_is_followed(watched: Storage) -> None:
    watched.resolve(None)
    other = _commit(watched, "other", b"other")
    _git(watched, "symbolic-ref", "HEAD", "refs/heads/other")
    assert watched.resolve(None) == other


def test_the_data_branch_is_served_once_it_exists(watched: Storage) -> None:
    head = watched.resolve(None)
    watched.data_branch = "pulled"
    assert watched.resolve(None) == head  # no such branch yet: HEAD's
    pulled = _commit(watched, "pulled", b"pulled")
    assert watched.resolve(None) == pulled


def test_a_nested_branch_is_followed(watched: Storage) -> None:
    _git(watched, "symbolic-ref", "HEAD", "refs/heads/team/topic")
    first = _commit(watched, "team/topic", b"topic")
    second = _commit(watched, "side", b"side")
    assert watched.resolve(None) == first
    # libgit2 moves the ref alone: its file is in refs/heads/team/, a folder not watched.
    pygit2.Repository(str(watched.path)).references.create(
        "refs/heads/team/topic", second, force=True
    )
    assert watched.resolve(None) == second


def test_packed_refs_and_a_refs_folder_made_again_are_followed(watched: Storage) -> None:
    # The data branch: moving HEAD's branch also locks HEAD, which is watched where it lies.
    watched.data_branch = "pulled"
    _commit(watched, "pulled", b"pulled")
    watched.resolve(None)
    _git(watched, "pack-refs", "--all", "--prune")
    heads = watched.path / "refs" / "heads"
    shutil.rmtree(heads)
    heads.mkdir()
    side = _commit(watched, "side", b"side")  # a commit to move to, made beforehand
    packed = watched.resolve(None)  # from packed-refs, and the new folder is watched
    assert watched.resolve(None) == packed != side
    _git(watched, "update-ref", "refs/heads/pulled", side)  # touches refs/heads/ alone
    assert watched.resolve(None) == side


def test_reads_from_many_threads_see_the_last_commit(watched: Storage) -> None:
    last = _commit(watched, "main", b"2")
    seen: list[str] = []

    def read() -> None:
        for _ in range(200):
            watched.resolve(None)
        seen.append(watched.resolve(None))

    threads = [BoundedThread(read, f"reader {number}") for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [last] * 4


def test_a_read_is_kept_for_its_key_until_a_watched_file_changes(tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    watch = RefWatch((tmp_path, tmp_path / "refs"))
    reads: list[str] = []

    def read(branch: str) -> Callable[[], tuple[str, str]]:
        def reading() -> tuple[str, str]:
            reads.append(branch)
            return branch, f"commit {len(reads)}"

        return reading

    assert watch.served("main", read("main")) == "commit 1"
    assert watch.served("main", read("main")) == "commit 1"  # kept: not read again
    assert watch.served("pulled", read("main")) == "commit 2"  # another key reads
    (tmp_path / "refs" / "main").write_text("moved")
    assert watch.served("pulled", read("main")) == "commit 3"
    (tmp_path / "HEAD").write_text("moved")
    assert watch.served("pulled", read("main")) == "commit 4"
    (tmp_path / "HEAD").write_text("moved again")
    assert watch.served("pulled", read("team/x")) == "commit 5"  # a nested branch: not kept
    assert watch.served("pulled", read("team/x")) == "commit 6"
    assert len(reads) == 6


def test_a_watch_gives_its_descriptor_back(tmp_path: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    watch = RefWatch((tmp_path,))
    assert len(set(os.listdir("/proc/self/fd")) - before) == 1
    del watch
    gc.collect()
    assert set(os.listdir("/proc/self/fd")) <= before
