"""Writers beside a sync: a kill -9 at any moment, a second sync, an `understanding add`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metasrv.cli.main import main
from metasrv.index.client import FetchOptions
from metasrv.index.sync import SyncOptions, sync
from metasrv.index.wholeindex import sync_all
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from metasrv.repo.worktree import JOURNAL_NAME
from tests.builders import git
from tests.deadlines import BoundedThread, poll_until
from tests.distributions import build_wheel
from tests.indexserver import IndexBehaviour, LocalIndex, serve_index

FAST = SyncOptions(fetch=FetchOptions(backoff_seconds=0.01, timeout_seconds=5), checkpoint=1)
PROJECTS = [f"p{number:02d}" for number in range(8)]
KILLS = 6
DEADLINE_SECONDS = 60


@pytest.fixture
def meta(tmp_path: Path) -> Storage:
    """Return an empty meta repository with a working tree, as `metasrv init` makes it."""
    assert main(["init", str(tmp_path / "meta")]) == 0
    return Storage(tmp_path / "meta")


def _git(storage: Storage, *args: str) -> str:
    assert storage.workdir is not None
    return git(storage.workdir, *args)


def _start_sync(storage: Storage, index: LocalIndex, *names: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "metasrv", "sync", "--repo", str(storage.path)),
            *("--source", index.simple_url, "--checkpoint", "1", *names),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Return a sync's exit status and what it printed on stderr."""
    try:
        _, stderr = process.communicate(timeout=DEADLINE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("sync did not finish within its deadline") from None
    return process.returncode, stderr.decode()


def _kill_when(storage: Storage, process: subprocess.Popen[bytes], commits: int) -> None:
    """Kill -9 the sync as soon as its checkout journal shows, or after ``commits`` commits."""
    journal = storage.path / JOURNAL_NAME
    heads = {storage.branch_commit("main")}
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists():
            break
        heads.add(storage.branch_commit("main"))
        if len(heads) > commits:
            break
        time.sleep(0.001)  # polling the repository for the moment to kill, bounded
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=DEADLINE_SECONDS)


def test_a_sync_killed_at_any_moment_leaves_a_repository_the_rerun_makes_clean(
    meta: Storage, tmp_path: Path
) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    for name in PROJECTS:
        build_wheel(folder, name, "1.0")
    with serve_index(folder) as index:
        for round_number in range(KILLS):
            for name in PROJECTS:
                build_wheel(folder, name, f"2.{round_number}")
            committed = set(_git(meta, "ls-tree", "-r", "--name-only", "main").split())
            process = _start_sync(meta, index, "--all")
            _kill_when(meta, process, commits=1 + round_number % 4)
            # Whatever the moment, an operator's `git commit` now cannot delete committed data.
            staged_deletions = _git(meta, "diff", "--cached", "--name-only", "--diff-filter=D")
            assert not set(staged_deletions.split()) & committed
            summary = sync_all(meta, index.simple_url, FAST)
            assert summary.exit_code == 0
            assert _git(meta, "status", "--porcelain", "--untracked-files=all") == ""
            assert not (meta.path / JOURNAL_NAME).exists()
    head = meta.resolve(None)
    for name in PROJECTS:
        versions = [r.version_text for r in Catalog(meta).get_project(head, name).releases]
        assert versions == ["1.0", *(f"2.{n}" for n in range(KILLS))]
    _git(meta, "fsck", "--no-progress")


def test_two_syncs_at_once_on_one_repository_both_land(meta: Storage, tmp_path: Path) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    build_wheel(folder, "alpha", "1.0")
    build_wheel(folder, "beta", "1.0")
    behaviour = IndexBehaviour(faults={"/simple/alpha/": ["hang"]})
    with serve_index(folder, behaviour) as index:
        first = _start_sync(meta, index, "alpha")
        # The first sync has read the branch and waits on the source while the second commits.
        poll_until(
            lambda: any(path == "/simple/alpha/" for path, _ in index.requests), "the sync asked"
        )
        second = _start_sync(meta, index, "beta")
        second_status, second_err = _wait(second)
        index.release.set()
        first_status, first_err = _wait(first)
    assert (second_status, first_status) == (0, 0), second_err + first_err
    assert "Traceback" not in second_err + first_err
    assert set(Catalog(meta).list_projects(meta.resolve(None))) == {"alpha", "beta"}
    assert _git(meta, "status", "--porcelain") == ""


def test_an_understanding_added_during_a_sync_does_not_stop_it(
    meta: Storage, tmp_path: Path
) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    build_wheel(folder, "alpha", "1.0")
    behaviour = IndexBehaviour(faults={"/simple/alpha/": ["hang"]})
    with serve_index(folder, behaviour) as index:
        result: list[object] = []
        worker = BoundedThread(
            lambda: result.append(sync(meta, index.simple_url, ["alpha"], FAST)), "sync"
        )
        worker.start()
        poll_until(
            lambda: any(path == "/simple/alpha/" for path, _ in index.requests), "the sync asked"
        )
        added = main(
            [
                *("understanding", "add", "audit", "--repo", str(meta.path)),
                *("--repository", "https://understandings.invalid/audit", "--description", "x"),
            ]
        )
        index.release.set()
        worker.join(DEADLINE_SECONDS)
    assert added == 0
    (summary,) = result
    assert summary.exit_code == 0  # type: ignore[attr-defined]
    head = meta.resolve(None)
    assert set(Catalog(meta).list_projects(head)) == {"alpha"}
    assert "understandings/audit.toml" in _git(meta, "ls-tree", "-r", "--name-only", head)
