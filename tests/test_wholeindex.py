"""`metasrv sync --all`: one conditional root request, then only the projects whose serial moved."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasrv.cli.main import main
from metasrv.errors import SourceError
from metasrv.index.client import FetchOptions
from metasrv.index.rootindex import iter_html_projects, iter_json_projects
from metasrv.index.sync import SyncOptions, SyncSummary
from metasrv.index.syncstate import STATE_FOLDER
from metasrv.index.wholeindex import FOLLOW_LOCK, Follower, follow, sync_all
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import CommitId, Storage
from tests.builders import git
from tests.deadlines import THREAD_DEADLINE_SECONDS, BoundedThread, poll_until
from tests.distributions import build_wheel
from tests.indexserver import IndexBehaviour, LocalIndex, serve_index

FAST = SyncOptions(fetch=FetchOptions(backoff_seconds=0.01, timeout_seconds=5))
DEADLINE_SECONDS = 60


@dataclass
class Mirror:
    """A meta repository fully synced from a local index of 50 projects with serials."""

    meta: Storage
    index: LocalIndex
    folder: Path


def _name(number: int) -> str:
    return f"proj{number:02d}"


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    """Serve 50 projects with serials and sync them all once."""
    folder = tmp_path / "archives"
    folder.mkdir()
    for number in range(50):
        build_wheel(folder, _name(number), "1.0", requires_dist=["alpha"] if number % 2 else [])
    behaviour = IndexBehaviour(serials={_name(n): 100 + n for n in range(50)})
    assert main(["init", str(tmp_path / "meta")]) == 0
    meta = Storage(tmp_path / "meta")
    with serve_index(folder, behaviour) as index:
        first = sync_all(meta, index.simple_url, FAST)
        assert (first.changed, len(first.commits)) == (50, 1)
        index.requests.clear()
        yield Mirror(meta, index, folder)


def test_a_changed_index_costs_one_root_request_and_one_per_changed_project(
    mirror: Mirror,
) -> None:
    index, serials = mirror.index, mirror.index.behaviour.serials
    assert serials is not None
    before = mirror.meta.resolve(None)
    build_wheel(mirror.folder, _name(3), "2.0")  # a new file
    serials[_name(3)] = 200
    index.behaviour.yanked["proj07-1.0-py3-none-any.whl"] = "broken"  # a yank
    serials[_name(7)] = 201
    build_wheel(mirror.folder, "newcomer", "0.1")  # a new project
    serials["newcomer"] = 202
    for path in index.files_of(_name(11)):  # a project the source no longer lists
        path.unlink()
    summary = sync_all(mirror.meta, index.simple_url, FAST)
    pages = index.page_requests()
    # The root first; the project pages are fetched by concurrent workers, in any order.
    assert pages[0] == "/simple/"
    assert sorted(pages[1:]) == ["/simple/newcomer/", "/simple/proj03/", "/simple/proj07/"]
    assert index.gzip_sent >= 1  # the root came compressed
    # Beyond the pages, only the new files' PEP 658 metadata is fetched.
    assert sorted(path for path, _ in index.requests if path.startswith("/files/")) == [
        "/files/newcomer-0.1-py3-none-any.whl.metadata",
        "/files/proj03-2.0-py3-none-any.whl.metadata",
    ]
    assert len(summary.commits) == 1
    assert (summary.changed, summary.removed) == (3, 1)
    head = mirror.meta.resolve(None)
    catalog = Catalog(mirror.meta)
    names = catalog.list_projects(head)
    assert "proj11" not in names
    assert "newcomer" in names
    assert len(names) == 50
    assert "proj11" in catalog.list_projects(before)  # older commits keep it
    message = git(mirror.meta.path, "log", "-1", "--format=%B", head)
    assert "no longer lists" in message
    assert "proj11" in message
    yanked = catalog.get_project(head, _name(7)).releases[0]
    assert yanked.yanked == "broken"
    assert [r.version_text for r in catalog.get_project(head, _name(3)).releases] == ["1.0", "2.0"]
    assert catalog.get_project(head, _name(3)).source_state.serial == 200


def test_an_unchanged_root_answers_304_and_nothing_else_is_asked(mirror: Mirror) -> None:
    head = mirror.meta.resolve(None)
    sent = mirror.index.bytes_sent
    summary = sync_all(mirror.meta, mirror.index.simple_url, FAST)
    assert mirror.index.requests == [("/simple/", None)]
    assert mirror.index.bytes_sent == sent  # a 304 has no body: the root was not sent again
    assert summary.requests == 1
    assert summary.commits == []
    assert mirror.meta.resolve(None) == head


def test_a_project_that_failed_to_sync_is_tried_again_by_the_next_sync(mirror: Mirror) -> None:
    """The root's ETag is kept only when every project is synced: a 304 must not hide one."""
    serials = mirror.index.behaviour.serials
    assert serials is not None
    build_wheel(mirror.folder, _name(4), "2.0")
    serials[_name(4)] += 1000
    mirror.index.behaviour.faults["/simple/proj04/"] = ["500"] * 20
    failed = sync_all(mirror.meta, mirror.index.simple_url, FAST)
    assert (failed.exit_code, failed.changed) == (1, 0)
    mirror.index.behaviour.faults.clear()
    retried = sync_all(mirror.meta, mirror.index.simple_url, FAST)
    assert (retried.exit_code, retried.changed) == (0, 1)


def test_a_whole_index_sync_reports_its_progress_after_each_commit(mirror: Mirror) -> None:
    serials = mirror.index.behaviour.serials
    assert serials is not None
    for number in (4, 5, 6):
        build_wheel(mirror.folder, _name(number), "2.0")
        serials[_name(number)] += 1000
    seen: list[tuple[int, int]] = []
    options = replace(FAST, checkpoint=1)
    summary = sync_all(
        mirror.meta,
        mirror.index.simple_url,
        options,
        progress=lambda done, total, _: seen.append((done, total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert summary.changed == 3


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_the_sync_state_is_rebuilt_from_git_when_lost(mirror: Mirror, damage: str) -> None:
    (state_file,) = (mirror.meta.path / STATE_FOLDER).iterdir()
    if damage == "deleted":
        state_file.unlink()
    else:
        state_file.write_text('{"commit": 7')
    summary = sync_all(mirror.meta, mirror.index.simple_url, FAST)
    # Without the root's ETag the root comes whole; the serials come from the project files.
    assert mirror.index.page_requests() == ["/simple/"]
    assert summary.commits == []
    mirror.index.requests.clear()
    sync_all(mirror.meta, mirror.index.simple_url, FAST)
    assert mirror.index.requests == [("/simple/", None)]  # and the ETag is kept again


def test_a_sync_onto_a_new_branch_starts_it_at_heads_commit(mirror: Mirror) -> None:
    serials = mirror.index.behaviour.serials
    assert serials is not None
    head = mirror.meta.resolve(None)
    build_wheel(mirror.folder, _name(4), "2.0")
    serials[_name(4)] += 1000
    summary = sync_all(mirror.meta, mirror.index.simple_url, replace(FAST, branch="pulled"))
    # Only the moved project is asked for: the new branch knows what HEAD's commit knows.
    assert sorted(mirror.index.page_requests()) == ["/simple/", "/simple/proj04/"]
    (commit_id,) = summary.commits
    assert mirror.meta.first_parent(commit_id) == head
    assert mirror.meta.resolve("pulled") == commit_id
    assert mirror.meta.resolve(None) == head
    # The branch synced is the one whose serials and root ETag count: nothing moved since.
    mirror.index.requests.clear()
    sent = mirror.index.bytes_sent
    again = sync_all(mirror.meta, mirror.index.simple_url, replace(FAST, branch="pulled"))
    assert (mirror.index.page_requests(), again.commits) == (["/simple/"], [])
    assert mirror.index.bytes_sent == sent  # the root answered 304


def test_a_root_without_serials_falls_back_to_a_conditional_request_per_project(
    mirror: Mirror,
) -> None:
    mirror.index.behaviour.root_serials = False  # the root's ETag changes with its body
    summary = sync_all(mirror.meta, mirror.index.simple_url, FAST)
    pages = mirror.index.page_requests()
    assert pages[0] == "/simple/"
    assert len(pages) == 51
    assert not [path for path, _ in mirror.index.requests if path.startswith("/files/")]
    assert summary.commits == []
    again = sync_all(mirror.meta, mirror.index.simple_url, FAST)
    assert again.requests == 51  # without serials a 304 root cannot vouch for the pages


def test_a_bare_sync_says_to_name_projects_or_pass_all(
    mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(mirror.meta.path)
    assert main(["sync", "--repo", repo, "--source", mirror.index.simple_url]) == 2
    assert "--all" in capsys.readouterr().err
    assert main(["sync", "--repo", repo, "--follow", "proj01"]) == 2
    assert mirror.index.requests == []


def _move_ten_to_fourteen(mirror: Mirror, stalling: str) -> tuple[LocalIndex, CommitId]:
    """Publish a new release of proj10 to proj14, proj12's page stalling as ``stalling`` says.

    Return the index and the meta repository's head before any sync of them.
    """
    serials = mirror.index.behaviour.serials
    assert serials is not None
    for number in range(10, 15):
        build_wheel(mirror.folder, _name(number), "3.0")
        serials[_name(number)] += 1000
    mirror.index.behaviour.faults["/simple/proj12/"] = [stalling]
    return mirror.index, mirror.meta.resolve(None)


def test_follow_stops_between_commits_on_sigterm_and_leaves_a_whole_repository(
    mirror: Mirror,
) -> None:
    index, before = _move_ten_to_fourteen(mirror, stalling="hang")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metasrv",
            "sync",
            "--all",
            "--follow",
            "--interval",
            "0.1",
            "--checkpoint",
            "1",
            "--repo",
            str(mirror.meta.path),
            "--source",
            index.simple_url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while ("/simple/proj12/", None) not in index.requests:
            assert time.monotonic() < deadline, "the follower never reached proj12"
            assert process.poll() is None
            time.sleep(0.01)  # polling the index's request log, with a deadline
        process.send_signal(signal.SIGTERM)
        index.release.set()  # the checkpoint in flight finishes and is committed
        _, stderr = process.communicate(timeout=DEADLINE_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    head = mirror.meta.resolve(None)
    catalog = Catalog(mirror.meta)
    changed = [c.normalized_name for c in catalog.changed_since(before, head)]
    assert changed == ["proj10", "proj11", "proj12"]  # stopped after proj12's commit
    for name in catalog.list_projects(head):
        catalog.get_project(head, name)  # every file parses
    rest = sync_all(mirror.meta, index.simple_url, FAST)
    assert rest.changed == 2
    assert len(rest.commits) == 1


def test_follow_stops_between_commits_when_asked(mirror: Mirror) -> None:
    """The same as on SIGTERM, in-process: the commit in flight lands, the next never starts."""
    index, before = _move_ten_to_fourteen(mirror, stalling="hold")
    reports: list[SyncSummary | Exception] = []

    async def run() -> None:
        stop, loop = asyncio.Event(), asyncio.get_running_loop()

        def stop_while_proj12_is_read() -> None:
            poll_until(lambda: ("/simple/proj12/", None) in index.requests, "a read of proj12")
            loop.call_soon_threadsafe(stop.set)
            index.release.set()

        stopper = BoundedThread(stop_while_proj12_is_read, "stopper")
        stopper.start()
        options = replace(FAST, checkpoint=1)
        following = follow(
            mirror.meta, index.simple_url, options, interval=60, stop=stop, report=reports.append
        )
        await asyncio.wait_for(following, DEADLINE_SECONDS)
        stopper.join()

    asyncio.run(run())
    changed = Catalog(mirror.meta).changed_since(before, mirror.meta.resolve(None))
    assert [c.normalized_name for c in changed] == ["proj10", "proj11", "proj12"]
    assert [type(report) for report in reports] == [SyncSummary]


def test_a_server_follower_syncs_in_its_thread_one_per_repository_and_stops(
    mirror: Mirror,
) -> None:
    serials = mirror.index.behaviour.serials
    assert serials is not None
    before = mirror.meta.resolve(None)
    build_wheel(mirror.folder, _name(5), "2.0")
    serials[_name(5)] += 1000
    reports: list[list[SyncSummary | Exception]] = [[], []]
    followers = [
        Follower(mirror.meta.path, mirror.index.simple_url, FAST, interval=0.05, report=r.append)
        for r in reports
    ]
    for follower in followers:
        follower.start()
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while sum(len(r) for r in reports) < 3:
            assert time.monotonic() < deadline, f"the followers reported {reports}"
            time.sleep(0.01)  # polling the followers' reports, with a deadline
    finally:
        # The waiting one first: stopped after the following one, it could take the lock between.
        waiting_first = sorted(zip(followers, reports, strict=True), key=lambda f: len(f[1]) > 0)
        assert all(follower.stop(DEADLINE_SECONDS) for follower, _ in waiting_first)
    assert sorted(len(r) > 0 for r in reports) == [False, True]  # the lock let one follow
    first = next(r for r in reports if r)[0]
    assert isinstance(first, SyncSummary)
    assert first.changed == 1
    changed = Catalog(mirror.meta).changed_since(before, mirror.meta.resolve(None))
    assert [c.normalized_name for c in changed] == [_name(5)]


def _alpha_and_an_empty_repository(tmp_path: Path) -> Path:
    """Return a folder of archives holding alpha 1.0, beside an empty meta repository."""
    folder = tmp_path / "archives"
    folder.mkdir()
    build_wheel(folder, "alpha", "1.0")
    assert main(["init", str(tmp_path / "meta")]) == 0
    return folder


def test_a_follower_stuck_on_a_hung_source_lets_the_server_stop_on_time(tmp_path: Path) -> None:
    """``stop`` gives up at its timeout; the thread left behind cannot keep the process alive."""
    folder = _alpha_and_an_empty_repository(tmp_path)
    reports: list[SyncSummary | Exception] = []
    with serve_index(folder, IndexBehaviour(faults={"/simple/": ["hold"]})) as index:
        follower = Follower(
            tmp_path / "meta", index.simple_url, FAST, interval=60, report=reports.append
        )
        follower.start()
        poll_until(lambda: index.requests, "the follower to ask for the root")
        assert follower.stop(0.1) is False  # the root request is still held
        # A thread dump names it, and at exit the interpreter does not wait for it.
        lingering = [t for t in threading.enumerate() if t.name == "metasrv-follow"]
        assert [thread.daemon for thread in lingering] == [True]
        index.release.set()
        assert follower.stop(THREAD_DEADLINE_SECONDS) is True
    assert [type(report) for report in reports] == [SyncSummary]
    # Its loop has ended: stopping it again, as a shutdown might, neither fails nor waits.
    assert follower.stop(1) is True


def _follower_threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.name == "metasrv-follow" and t.ident}


def _in_its_event_loop(thread_ident: int) -> bool:
    """Return whether a thread is idle in its event loop, waiting in select()."""
    frame = sys._current_frames().get(thread_ident)
    return frame is not None and frame.f_code.co_name == "select"


def test_a_waiting_follower_takes_over_within_an_interval_once_the_following_one_stops(
    tmp_path: Path,
) -> None:
    """Of two server workers the one left follows, without a restart, once the other stops."""
    folder = _alpha_and_an_empty_repository(tmp_path)
    meta = Storage(tmp_path / "meta")
    lock_path = meta.path / STATE_FOLDER / FOLLOW_LOCK
    first_reports: list[SyncSummary | Exception] = []
    second_reports: list[SyncSummary | Exception] = []
    with serve_index(folder) as index:
        first = Follower(
            meta.path, index.simple_url, FAST, interval=60, report=first_reports.append
        )
        second = Follower(
            meta.path, index.simple_url, FAST, interval=0.05, report=second_reports.append
        )
        started = [first]
        first.start()
        try:
            poll_until(lambda: first_reports, "the first follower's sync")
            build_wheel(folder, "beta", "1.0")
            # The second opens the lock file ("w" empties it) and tries the lock before it
            # first waits in its event loop: both seen, it found the lock held, rather than
            # arriving after the first had gone (and never waiting at all).
            lock_path.write_text("held by the first follower")
            before = _follower_threads()
            second.start()
            started.append(second)
            (waiting,) = _follower_threads() - before
            poll_until(
                lambda: lock_path.stat().st_size == 0 and _in_its_event_loop(waiting),
                "the second follower to find the lock held",
            )
            assert first.stop(THREAD_DEADLINE_SECONDS)
            poll_until(lambda: second_reports, "the second follower to take over")
        finally:
            assert all(follower.stop(THREAD_DEADLINE_SECONDS) for follower in started)
    taken_over = second_reports[0]
    assert isinstance(taken_over, SyncSummary)
    assert taken_over.changed == 1  # beta, which appeared after the first follower's sync
    assert list(Catalog(meta).list_projects(meta.resolve(None))) == ["alpha", "beta"]


ENTRY = st.fixed_dictionaries(
    {"name": st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,20}", fullmatch=True)},
    optional={"_last-serial": st.integers(0, 2**40)},
)


class _Trickle(io.StringIO):
    """A stream that hands out a few characters per read, as a slow pipe does."""

    def __init__(self, text: str, step: int) -> None:
        super().__init__(text)
        self.step = step

    def read(self, size: int | None = -1) -> str:
        return super().read(min(self.step, size if size and size > 0 else self.step))


@given(
    entries=st.lists(ENTRY, max_size=30),
    step=st.integers(1, 9),
    indent=st.sampled_from([None, 1]),
    meta_first=st.booleans(),
)
def test_the_root_parser_agrees_with_json_loads_however_the_stream_is_cut(
    entries: list[dict[str, object]], step: int, indent: int | None, meta_first: bool
) -> None:
    meta = {"api-version": "1.1", "_last-serial": 5}
    document = (
        {"meta": meta, "projects": entries} if meta_first else {"projects": entries, "meta": meta}
    )
    text = json.dumps(document, indent=indent)
    parsed = list(iter_json_projects(_Trickle(text, step)))
    assert parsed == [(e["name"], e.get("_last-serial")) for e in entries]


@pytest.mark.parametrize(
    "text",
    [
        '{"meta": {}}',
        '{"projects": [{"name": "a"}',
        '{"projects": [{"nom": "a"}]}',
        '{"projects": [{"name": "a", "_last-serial": "seven"}]}',
        '{"projects": [{"name": "a", "_last-serial": -7}]}',
        '{"projects": [1]}',
        "[]",
    ],
    ids=[
        "no-projects",
        "truncated",
        "no-name",
        "word-serial",
        "negative-serial",
        "not-an-object",
        "a-list",
    ],
)
def test_a_broken_root_is_a_source_error_never_an_empty_index(text: str) -> None:
    with pytest.raises(SourceError):
        list(iter_json_projects(io.StringIO(text)))


def test_the_html_root_parser_reads_anchors_cut_across_chunks() -> None:
    anchors = "".join(f'<a href="/simple/p{n}/">P{n}</a>\n' for n in range(500))
    assert list(iter_html_projects(_Trickle(f"<html><body>{anchors}</body></html>", 7))) == [
        f"P{n}" for n in range(500)
    ]


def test_a_serial_spelled_as_a_decimal_string_is_read_as_pypi_sends_it() -> None:
    text = '{"projects": [{"name": "a", "_last-serial": "7"}, {"name": "b", "_last-serial": 8}]}'
    assert list(iter_json_projects(io.StringIO(text))) == [("a", 7), ("b", 8)]
