"""Pull-through's writer on a real repository: queued changes land together, failures stay apart."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pygit2
import pytest

from metasrv.errors import InvalidData
from metasrv.index import pullwriter
from metasrv.index.buildrun import AGAIN_NAME, LOCK_NAME
from metasrv.index.projectmerge import Merge, adopt
from metasrv.index.pullwriter import PullWriter
from metasrv.model import MetadataStatus, Project, Release
from metasrv.names import normalize_name, project_path
from metasrv.repo.catalog import Catalog
from metasrv.repo.projectfile import write_project
from metasrv.repo.storage import BlobId, CommitId, Storage
from tests.builders import make_file, make_project
from tests.deadlines import wait_for

SOURCE = "http://127.0.0.1:9/simple/"
T = TypeVar("T")

ALPHA = make_project("Alpha", ["1.0"])
BETA = make_project("beta", ["1.0", "2.0"])
GAMMA = make_project("gamma", ["1.0"])


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def path_of(name: str) -> str:
    return f"data/{project_path(normalize_name(name))}"


def commit_of(storage: Storage, commit_id: str | None) -> pygit2.Commit:
    assert commit_id is not None
    commit = pygit2.Repository(str(storage.path)).get(commit_id)
    assert isinstance(commit, pygit2.Commit)
    return commit


def message(storage: Storage, commit_id: str | None) -> str:
    return commit_of(storage, commit_id).message


def parents(storage: Storage, commit_id: str | None) -> list[str]:
    return [str(parent) for parent in commit_of(storage, commit_id).parent_ids]


def write(writer: PullWriter, name: str, merge: Merge, documents: dict[str, bytes]) -> CommitId:
    """Write one change on a loop of its own; return the commit that holds it."""
    commit_id = run(writer.write(normalize_name(name), merge, name, documents))
    assert commit_id is not None
    return commit_id


def writer_of(storage: Storage, branch: str | None = None, **options: Any) -> PullWriter:
    options.setdefault("build_in_background", False)
    return PullWriter(storage.path, SOURCE, branch, **options)


def unchanged(current: Project | None) -> Project | None:
    return current


def test_changes_queued_together_land_in_one_commit_that_names_each(storage: Storage) -> None:
    before = storage.resolve(None)
    handed: list[tuple[BlobId | None, Project]] = []
    writer = writer_of(storage, written=lambda blob_id, project: handed.append((blob_id, project)))

    async def pull() -> list[CommitId | None]:
        return list(
            await asyncio.gather(
                writer.write(normalize_name("alpha"), adopt(ALPHA), "Alpha (new, 1 files)", {}),
                writer.write(
                    normalize_name("beta"),
                    adopt(BETA),
                    "beta (new, 2 files)",
                    {"data/b/e/beta-1.0.metadata": b"Name: beta\n"},
                ),
            )
        )

    first, second = run(pull())
    head = storage.resolve(None)
    assert first == second == head
    assert parents(storage, head) == [before]
    assert message(storage, head) == (
        f"pull-through: 2 projects from {SOURCE}\n\n- Alpha (new, 1 files)\n- beta (new, 2 files)"
    )
    catalog = Catalog(storage)
    assert catalog.get_project(head, "alpha") == ALPHA
    assert catalog.get_project(head, "beta") == BETA
    assert storage.read(head, "data/b/e/beta-1.0.metadata") == b"Name: beta\n"
    # The server's reader is handed exactly what was committed.
    assert handed == [
        (storage.blob_id(head, path_of("alpha")), ALPHA),
        (storage.blob_id(head, path_of("beta")), BETA),
    ]
    assert writer.queued == 0
    assert writer.running() == []


def test_one_project_is_one_project_in_the_message_and_merges_apply_in_order(
    storage: Storage,
) -> None:
    writer = writer_of(storage)
    newer = make_project("Alpha", ["1.0", "2.0"])

    async def pull() -> None:
        await asyncio.gather(
            writer.write(normalize_name("alpha"), adopt(ALPHA), "first", {}),
            writer.write(normalize_name("alpha"), adopt(newer), "second", {}),
        )

    run(pull())
    head = storage.resolve(None)
    assert message(storage, head) == f"pull-through: 1 project from {SOURCE}\n\n- first\n- second"
    assert Catalog(storage).get_project(head, "alpha") == newer


def test_a_write_that_changes_nothing_makes_no_commit_and_answers_the_branchs_commit(
    storage: Storage,
) -> None:
    before = storage.resolve(None)
    handed: list[Project] = []
    writer = writer_of(storage, written=lambda _, project: handed.append(project))
    assert write(writer, "flask", unchanged, {}) == before
    assert storage.resolve(None) == before
    assert handed == []


def test_documents_alone_are_committed_under_a_message_naming_no_project(storage: Storage) -> None:
    writer = writer_of(storage)
    commit_id = write(writer, "flask", unchanged, {"x.metadata": b"d"})
    assert commit_id == storage.resolve(None)
    assert storage.read(commit_id, "x.metadata") == b"d"
    assert message(storage, commit_id) == f"pull-through: 0 projects from {SOURCE}\n\n"


def test_a_broken_project_file_fails_its_own_write_and_not_the_others(storage: Storage) -> None:
    storage.commit("main", {path_of("broken"): b"this is [ not toml"}, "break it")
    writer = writer_of(storage)

    async def pull() -> list[CommitId | BaseException | None]:
        return list(
            await asyncio.gather(
                writer.write(normalize_name("broken"), adopt(BETA), "broken", {}),
                writer.write(normalize_name("alpha"), adopt(ALPHA), "alpha", {}),
                return_exceptions=True,
            )
        )

    broken, alpha = run(pull())
    assert isinstance(broken, InvalidData)
    assert alpha == storage.resolve(None)
    assert storage.read(alpha, path_of("broken")) == b"this is [ not toml"
    assert Catalog(storage).get_project(alpha, "alpha") == ALPHA
    assert message(storage, alpha) == f"pull-through: 1 project from {SOURCE}\n\n- alpha"


def test_a_failing_commit_fails_every_write_in_it_and_the_next_write_still_commits(
    storage: Storage,
) -> None:
    before = storage.resolve(None)
    writer = writer_of(storage)

    def failing(current: Project | None) -> Project | None:
        raise RuntimeError("the merge broke")

    async def pull() -> list[CommitId | BaseException | None]:
        return list(
            await asyncio.gather(
                writer.write(normalize_name("alpha"), adopt(ALPHA), "alpha", {}),
                writer.write(normalize_name("beta"), failing, "beta", {}),
                return_exceptions=True,
            )
        )

    results = run(pull())
    assert [str(result) for result in results] == ["the merge broke"] * 2
    assert storage.resolve(None) == before
    assert writer.queued == 0
    assert write(writer, "alpha", adopt(ALPHA), {}) != before


def held(project: Project, started: threading.Event, release: threading.Event) -> Merge:
    """Return a merge that says it began, then waits for the test to let the commit finish."""

    def merge(current: Project | None) -> Project | None:
        started.set()
        wait_for(release, "the test let the commit finish")
        return project

    return merge


def test_a_change_queued_while_a_commit_runs_lands_in_the_next_commit(storage: Storage) -> None:
    started, release = threading.Event(), threading.Event()
    writer = writer_of(storage)
    slow = held(ALPHA, started, release)

    async def pull() -> tuple[CommitId | None, CommitId | None]:
        first = asyncio.ensure_future(writer.write(normalize_name("alpha"), slow, "alpha", {}))
        try:
            await asyncio.to_thread(wait_for, started, "the first commit began")
            assert writer.queued == 1
            (committing,) = writer.running()
            second = asyncio.ensure_future(
                writer.write(normalize_name("beta"), adopt(BETA), "beta", {})
            )
            await asyncio.sleep(0)  # the second write queues itself; no new commit task
            assert writer.queued == 2
            assert writer.running() == [committing]
        finally:
            release.set()
        return await first, await second

    first, second = run(pull())
    assert first is not None
    assert second == storage.resolve(None)
    assert parents(storage, second) == [first]
    assert message(storage, first).endswith("\n\n- alpha")
    assert message(storage, second).endswith("\n\n- beta")
    assert storage.read(first, path_of("beta")) is None


def test_a_caller_who_gave_up_does_not_keep_the_others_in_its_commit_waiting(
    storage: Storage,
) -> None:
    started, release = threading.Event(), threading.Event()
    writer = writer_of(storage)

    async def give_up() -> CommitId | None:
        first = asyncio.ensure_future(
            writer.write(normalize_name("alpha"), held(ALPHA, started, release), "alpha", {})
        )
        second = asyncio.ensure_future(writer.write(normalize_name("beta"), adopt(BETA), "b", {}))
        try:
            await asyncio.to_thread(wait_for, started, "the commit of both began")
            assert writer.queued == 2
            first.cancel()  # alpha's client hung up; beta's still waits
        finally:
            release.set()
        return await second

    assert run(give_up()) == storage.resolve(None)
    assert message(storage, storage.resolve(None)).endswith("\n\n- alpha\n- b")


def test_a_commit_waits_for_every_change_announced_as_coming(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pullwriter, "GATHER_SECONDS", 60.0)  # longer than the test can take
    before = storage.resolve(None)
    writer = writer_of(storage)

    async def pull() -> list[CommitId | None]:
        beta_fetched, gamma_fetched = asyncio.Event(), asyncio.Event()

        async def announced(name: str, project: Project, fetched: asyncio.Event | None) -> Any:
            with writer.coming():
                if fetched is not None:
                    await fetched.wait()  # its page is still on its way
            return await writer.write(normalize_name(name), adopt(project), name, {})

        writes = [
            asyncio.ensure_future(announced("alpha", ALPHA, None)),
            asyncio.ensure_future(announced("beta", BETA, beta_fetched)),
            asyncio.ensure_future(announced("gamma", GAMMA, gamma_fetched)),
        ]
        while writer.queued < 1:
            await asyncio.sleep(0)  # alpha's change queued; beta's and gamma's are coming
        beta_fetched.set()
        while writer.queued < 2:
            await asyncio.sleep(0)
        gamma_fetched.set()
        return list(await asyncio.gather(*writes))

    commits = run(pull())
    head = storage.resolve(None)
    assert commits == [head] * 3
    assert parents(storage, head) == [before]
    assert message(storage, head).endswith("\n\n- alpha\n- beta\n- gamma")


def test_a_change_announced_and_never_queued_delays_a_commit_only_so_long(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pullwriter, "GATHER_SECONDS", 0.01)
    writer = writer_of(storage)

    async def pull() -> CommitId | None:
        with writer.coming():  # a pull whose source never answers
            return await writer.write(normalize_name("alpha"), adopt(ALPHA), "alpha", {})

    assert run(pull()) == storage.resolve(None)
    assert Catalog(storage).get_project(storage.resolve(None), "alpha") == ALPHA


def test_a_write_whose_caller_gave_up_does_not_stop_later_writes(storage: Storage) -> None:
    started, release = threading.Event(), threading.Event()
    writer = writer_of(storage)
    slow = held(ALPHA, started, release)

    async def give_up() -> list[object]:
        first = asyncio.ensure_future(writer.write(normalize_name("alpha"), slow, "alpha", {}))
        try:
            await asyncio.to_thread(wait_for, started, "the commit began")
            (committing,) = writer.running()
            first.cancel()  # the client hung up while its change was being committed
        finally:
            release.set()
        return list(await asyncio.gather(first, committing, return_exceptions=True))

    cancelled, committed = run(give_up())
    assert isinstance(cancelled, asyncio.CancelledError)
    assert committed is None  # the commit task ended cleanly
    assert writer.queued == 0
    assert Catalog(storage).get_project(storage.resolve(None), "alpha") == ALPHA
    assert write(writer, "beta", adopt(BETA), {}) == storage.resolve(None)


def test_a_data_branch_starts_at_heads_commit_and_leaves_heads_branch_alone(
    storage: Storage,
) -> None:
    main = storage.resolve(None)
    writer = writer_of(storage, "pulled")
    assert writer.follow_head() is None  # no data branch yet: nothing to merge into
    commit_id = write(writer, "alpha", adopt(ALPHA), {})
    assert commit_id == storage.branch_commit("pulled")
    assert parents(storage, commit_id) == [main]
    assert storage.resolve(None) == main
    catalog = Catalog(storage)
    assert catalog.get_project(commit_id, "alpha") == ALPHA
    assert catalog.get_project(commit_id, "flask") == catalog.get_project(main, "flask")


def test_the_data_branch_takes_in_heads_later_commits_which_win(storage: Storage) -> None:
    writer = writer_of(storage, "pulled")
    pulled = write(writer, "flask", adopt(ALPHA), {})
    assert writer.follow_head() is None  # nothing new on main
    edited = make_project("Flask", ["9.0"])
    later = {path_of("click"): None, path_of("flask"): write_project(edited)}
    main = storage.commit("main", later, "by hand")
    assert main is not None

    merge = writer.follow_head()
    assert merge is not None
    assert merge == storage.branch_commit("pulled")
    assert parents(storage, merge) == [pulled, main]
    assert message(storage, merge) == "Merge main into pulled"
    assert storage.read(merge, path_of("click")) is None
    assert storage.read(merge, path_of("flask")) == write_project(edited)
    assert writer.follow_head() is None  # merged once

    # A write merges HEAD's new commits in first.
    storage.commit("main", {path_of("werkzeug"): None}, "drop werkzeug")
    commit_id = write(writer, "alpha", adopt(ALPHA), {})
    assert storage.read(commit_id, path_of("werkzeug")) is None
    assert storage.read(commit_id, path_of("alpha")) is not None


@pytest.mark.parametrize("branch", [None, "main"])
def test_a_writer_on_heads_own_branch_has_nothing_to_follow(
    storage: Storage, branch: str | None
) -> None:
    writer = writer_of(storage, branch)
    storage.commit("main", {path_of("click"): None}, "by hand")
    assert writer.follow_head() is None
    commit_id = write(writer, "alpha", adopt(ALPHA), {})
    assert commit_id == storage.resolve(None) == storage.branch_commit("main")
    assert storage.branch_commit("pulled") is None


def _dynamic(project: Project) -> Project:
    sdist = dataclasses.replace(
        make_file("alpha-1.0.tar.gz", metadata=False), metadata_status=MetadataStatus.DYNAMIC
    )
    return Project.create(project.name, [Release.from_files("1.0", (sdist,))])


@pytest.mark.parametrize(
    ("merge", "in_background", "asked"),
    [
        (adopt(_dynamic(ALPHA)), True, True),
        (adopt(_dynamic(ALPHA)), False, False),
        (adopt(ALPHA), True, False),
    ],
    ids=["dynamic", "builds-off", "static"],
)
def test_a_commit_with_a_dynamic_sdist_asks_for_a_build(
    storage: Storage, merge: Merge, in_background: bool, asked: bool
) -> None:
    writer = writer_of(storage, build_in_background=in_background)
    # A run under way holds the lock: a request for a build asks it to scan once more.
    with (storage.path / LOCK_NAME).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run(writer.write(normalize_name("alpha"), merge, "alpha", {}))
    assert (storage.path / AGAIN_NAME).exists() is asked
