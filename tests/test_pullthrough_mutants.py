"""Pull-through driven in-process against a real local index: pulls, misses, refreshes, reads."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import re
import shutil
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pygit2
import pytest
from packaging.version import Version

from metasrv.errors import InvalidInput, NotFound, SourceError, SourceUnavailable
from metasrv.index import pullthrough, pullwriter
from metasrv.index.client import FetchOptions
from metasrv.index.projectmerge import batches
from metasrv.index.pullthrough import PullThrough
from metasrv.model import MetadataStatus, Project, Release
from metasrv.names import core_metadata_path, normalize_name
from metasrv.repo.catalog import Catalog
from metasrv.repo.projectfile import read_project
from metasrv.repo.storage import Storage
from tests.builders import create_meta_repository, make_file
from tests.deadlines import poll_until
from tests.distributions import build_wheel
from tests.gitremotes import tls_remote
from tests.test_pullthrough import DEADLINE_SECONDS, Source, source

__all__ = ["source"]  # the fixture, shared with the end-to-end pull-through tests

ALPHA = normalize_name("pt-alpha")
FAST = FetchOptions(retries=1, backoff_seconds=0.01, timeout_seconds=5)


@contextmanager
def pulling(source: Source, **options: Any) -> Iterator[tuple[PullThrough, list[str]]]:
    """Yield a pull-through in front of the source, and the lines it logs."""
    lines: list[str] = []
    pull = PullThrough(
        source.meta, source.index.simple_url, fetch=FAST, log=lines.append, **options
    )
    try:
        yield pull, lines
    finally:
        pull.close()


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, DEADLINE_SECONDS))


def head_project(source: Source, name: str, branch: str | None = None) -> Project:
    storage = Storage(source.meta)
    return Catalog(storage).get_project(storage.resolve(branch), name)


def pending(project: Project) -> dict[str, bool]:
    return {str(r.version): any(f.metadata_pending for f in r.files) for r in project.releases}


def test_a_first_ensure_commits_the_project_logs_it_and_asks_once(source: Source) -> None:
    with pulling(source) as (pull, lines):
        run(pull.ensure("PT_Alpha"))
        run(pull.ensure("pt.alpha"))
        assert pull.queued == 0
    assert source.page_requests("pt-alpha") == 1
    assert [str(r.version) for r in head_project(source, "pt-alpha").releases] == ["1.0", "2.0"]
    commit_id = Storage(source.meta).resolve(None)
    assert re.fullmatch(
        rf"pull-through pt-alpha: 2 files, \d+ ms, commit {commit_id[:12]}", lines[0]
    ), lines
    assert source.commits()[0].message == (
        f"pull-through: 1 project from {source.index.simple_url}\n\n- pt-alpha (new, 2 files)"
    )


def test_a_project_the_source_lacks_is_not_found_and_not_asked_for_again(
    source: Source,
) -> None:
    with pulling(source) as (pull, _):
        for _ in range(2):
            with pytest.raises(NotFound, match="the source has no project 'pt-gone'"):
                run(pull.ensure("pt-gone"))
        with pytest.raises(InvalidInput):
            run(pull.ensure("-not a name-"))
    assert source.page_requests("pt-gone") == 1
    assert not any("not" in path for path, _ in source.index.requests)


def test_a_source_that_fails_makes_an_unknown_project_unavailable(source: Source) -> None:
    source.index.behaviour.faults["/simple/pt-alpha/"] = ["500"] * 2
    with pulling(source) as (pull, _), pytest.raises(SourceUnavailable) as raised:
        run(pull.ensure("pt-alpha"))
    assert str(raised.value).startswith(f"pt-alpha: the source {source.index.simple_url} failed: ")
    assert "HTTP 500 after 2 attempts" in str(raised.value)


def test_complete_reads_only_the_release_asked_for(source: Source) -> None:
    # The background read of the rest waits on its document until the test releases it.
    source.index.behaviour.faults["/files/pt_alpha-2.0-py3-none-any.whl.metadata"] = ["hold"]
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-alpha"))
        assert pending(head_project(source, "pt-alpha")) == {"1.0": True, "2.0": True}
        run(pull.complete("pt-alpha", Version("1.0")))
        assert pending(head_project(source, "pt-alpha")) == {"1.0": False, "2.0": True}
        source.index.release.set()
        poll_until(
            lambda: not any(pending(head_project(source, "pt-alpha")).values()),
            "the background read filled in 2.0",
        )
    messages = [commit.message for commit in source.commits()]
    assert any(message.endswith("- pt-alpha (metadata of 1 files)") for message in messages)
    assert source.page_requests("pt-alpha") == 1  # both reads used the page the pull fetched


def test_a_new_pull_through_reads_pending_metadata_fetching_the_page_again(
    source: Source,
) -> None:
    source.index.behaviour.faults["/files/pt_beta-1.0-py3-none-any.whl.metadata"] = ["hold"]
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-beta"))
    source.index.release.set()  # the first one's background read was cancelled by close
    assert pending(head_project(source, "pt-beta")) == {"1.0": True}
    with pulling(source) as (pull, _):
        run(pull.complete("pt-beta"))
        run(pull.complete("pt-unknown"))  # nothing pulled, nothing to read
    assert pending(head_project(source, "pt-beta")) == {"1.0": False}
    assert head_project(source, "pt-beta").releases[0].files[0].metadata is not None
    assert source.page_requests("pt-beta") == 2
    assert source.page_requests("pt-unknown") == 0


def test_a_data_branch_that_cannot_follow_head_is_logged(source: Source) -> None:
    repository = pygit2.Repository(str(source.meta))
    repository.set_head(repository.head.target)  # an Oid: HEAD detached
    with pulling(source, branch="pulled") as (pull, lines):
        pull.close()  # never started: nothing to stop, and closing twice is harmless
    assert lines == [
        "pull-through: pulled does not follow HEAD's branch: HEAD does not name a branch"
    ]


def _releases(*sizes: int) -> list[Release]:
    """Return releases 0.0, 1.0, ... with so many files each."""
    return [
        Release.from_files(f"{n}.0", tuple(make_file(f"p-{n}.0-{i}.tar.gz") for i in range(size)))
        for n, size in enumerate(sizes)
    ]


@pytest.mark.parametrize(
    ("sizes", "files", "expected"),
    [
        ((2, 3, 1), 3, [["0.0", "1.0"], ["2.0"]]),
        ((2, 3, 1), 2, [["0.0"], ["1.0"], ["2.0"]]),
        ((1, 1, 1), 3, [["0.0", "1.0", "2.0"]]),
        ((1, 1, 1), 4, [["0.0", "1.0", "2.0"]]),
        ((3, 1, 1), 3, [["0.0"], ["1.0", "2.0"]]),  # a batch counts from nothing
        ((), 3, []),
    ],
)
def test_background_reads_go_in_batches_of_about_so_many_files(
    sizes: tuple[int, ...], files: int, expected: list[list[str]]
) -> None:
    found = batches(_releases(*sizes), files)
    assert [[str(release.version) for release in batch] for batch in found] == expected


def settled(pull: PullThrough) -> None:
    """Return once what was queued on the pull loop before this call has run."""
    run(pull._call(asyncio.sleep(0)))  # callbacks run in the order they were queued


def test_reads_of_different_releases_at_once_each_read_their_own(source: Source) -> None:
    """Concurrent reads share work only when they ask for the same release of one project."""
    held = "/files/pt_alpha-1.0-py3-none-any.whl.metadata"
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-alpha"))
        source.index.behaviour.faults[held] = ["hold"]

        async def both(other: Coroutine[Any, Any, None]) -> None:
            first = asyncio.ensure_future(pull.complete("pt-alpha", Version("1.0")))
            await other  # answered while 1.0's document is held
            source.index.release.set()
            await first

        run(both(pull.complete("pt-alpha", Version("2.0"))))
        assert pending(head_project(source, "pt-alpha")) == {"1.0": False, "2.0": False}


def test_a_page_fetched_again_for_pending_reads_is_kept_for_the_next(source: Source) -> None:
    source.index.behaviour.faults["/files/pt_alpha-1.0-py3-none-any.whl.metadata"] = ["hold"]
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-alpha"))
    source.index.release.set()  # the background read was cancelled by close
    with pulling(source) as (pull, _):
        run(pull.complete("pt-alpha", Version("1.0")))
        run(pull.complete("pt-alpha", Version("2.0")))
    assert pending(head_project(source, "pt-alpha")) == {"1.0": False, "2.0": False}
    assert source.page_requests("pt-alpha") == 2  # the first pull's, then one for both reads


def test_metadata_read_from_inside_a_wheel_is_committed_with_its_document(
    source: Source,
) -> None:
    """A source without PEP 658 files: the document read from the wheel is stored in git."""
    source.index.behaviour.pep658 = False
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-beta"))
        run(pull.complete("pt-beta"))
    dist_file = head_project(source, "pt-beta").releases[0].files[0]
    digest = dist_file.core_metadata_sha256
    assert digest is not None
    storage = Storage(source.meta)
    document = storage.read(storage.resolve(None), core_metadata_path(digest))
    assert document is not None
    assert hashlib.sha256(document).hexdigest() == digest
    assert b"Requires-Dist: pt-alpha<2" in document


def test_the_registered_spelling_is_taken_from_the_metadata_read(source: Source) -> None:
    """A JSON page names a project normalized; its METADATA says how it was registered."""
    build_wheel(source.archives, "PT_Gamma", "1.0")
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-gamma"))
        assert head_project(source, "pt-gamma").name == "pt-gamma"
        run(pull.complete("pt-gamma"))
        assert head_project(source, "pt-gamma").name == "PT_Gamma"
        build_wheel(source.archives, "PT_Gamma", "2.0")
        pull.refresh = 0
        pull.touch(normalize_name("pt-gamma"))
        poll_until(lambda: len(head_project(source, "pt-gamma").releases) == 2, "2.0 pulled")
    assert head_project(source, "pt-gamma").name == "PT_Gamma"  # a refresh keeps the spelling


def test_background_reads_of_two_projects_each_read_their_own(source: Source) -> None:
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-alpha"))
        run(pull.ensure("pt-beta"))
        poll_until(
            lambda: (
                not any(pending(head_project(source, "pt-alpha")).values())
                and not any(pending(head_project(source, "pt-beta")).values())
            ),
            "both projects' metadata read in the background",
        )
        poll_until(lambda: not pull._background, "finished background work let go of")


def test_a_background_read_that_fails_is_logged(
    source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pullthrough, "PAGE_CACHE_SIZE", 0)  # the read must ask for the page again
    with pulling(source) as (pull, lines):
        run(pull.ensure("pt-beta"))
        source.index.behaviour.faults["/simple/pt-beta/"] = ["500"] * 2
        poll_until(lambda: len(lines) == 2, "the failed background read logged")
    assert lines[1].startswith("pull-through pt-beta: metadata not read: ")
    assert lines[1].endswith("HTTP 500 after 2 attempts")
    assert pending(head_project(source, "pt-beta")) == {"1.0": True}


def test_the_page_kept_is_the_newest(source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages are kept to read pending metadata without asking again: the oldest goes first."""
    monkeypatch.setattr(pullthrough, "PAGE_CACHE_SIZE", 1)
    source.index.behaviour.faults["/files/pt_alpha-1.0-py3-none-any.whl.metadata"] = ["hold"]
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-alpha"))
        run(pull.ensure("pt-beta"))
        run(pull.complete("pt-beta"))
        assert source.page_requests("pt-beta") == 1  # beta's page, kept
        source.index.release.set()
        run(pull.complete("pt-alpha", Version("2.0")))
    assert source.page_requests("pt-alpha") == 2  # alpha's, asked again: beta's took its place


def test_pages_are_kept_by_their_files_too(source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """A count alone let a few large pages (numpy's: 5 MB of objects) hold the memory."""
    monkeypatch.setattr(pullthrough, "PAGE_CACHE_FILES", 3)  # alpha's 2 files, and one
    source.index.behaviour.faults["/files/pt_alpha-1.0-py3-none-any.whl.metadata"] = ["hold"]
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-alpha"))
        run(pull.ensure("pt-beta"))
        source.index.release.set()
        run(pull.complete("pt-alpha", Version("2.0")))
    assert source.page_requests("pt-alpha") == 2  # asked again: beta's page took its place


def test_a_release_whose_metadata_cannot_be_read_is_recorded_as_such(source: Source) -> None:
    """No file states a name then: the read still commits what it found."""
    source.index.behaviour.pep658 = False
    source.index.behaviour.tampered["pt_beta-1.0-py3-none-any.whl"] = b"not a zip" * 100
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-beta"))
        run(pull.complete("pt-beta"))
    dist_file = head_project(source, "pt-beta").releases[0].files[0]
    assert dist_file.metadata_status is MetadataStatus.UNUSABLE
    assert head_project(source, "pt-beta").name == "pt-beta"


def test_concurrent_first_requests_for_one_project_make_one_fetch(source: Source) -> None:
    source.index.behaviour.faults["/simple/pt-alpha/"] = ["hold"]

    async def three() -> None:
        names = ("pt-alpha", "PT_Alpha", "pt-beta")  # beta's pull is its own, not alpha's
        pulls = [asyncio.ensure_future(pull.ensure(name)) for name in names]
        while source.page_requests("pt-alpha") == 0:
            await asyncio.sleep(0.01)  # polling, bounded by run's deadline
        pulls.append(asyncio.ensure_future(pull.ensure("pt.alpha")))
        source.index.release.set()
        await asyncio.gather(*pulls)

    with pulling(source) as (pull, _):
        run(three())
    assert source.page_requests("pt-alpha") == 1
    assert head_project(source, "pt-beta").releases


def test_first_requests_fetched_at_once_land_in_one_commit(
    source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pullwriter, "GATHER_SECONDS", DEADLINE_SECONDS)
    source.index.behaviour.faults["/simple/pt-beta/"] = ["hold"]

    async def both() -> None:
        pulls = [asyncio.ensure_future(pull.ensure(name)) for name in ("pt-alpha", "pt-beta")]
        while pull.queued == 0:
            await asyncio.sleep(0.01)  # polling, bounded by run's deadline
        source.index.release.set()  # alpha's change waits in the queue for beta's
        await asyncio.gather(*pulls)

    with pulling(source) as (pull, _):
        run(both())
    (commit, *_) = source.commits()
    assert commit.message.endswith("\n\n- pt-alpha (new, 2 files)\n- pt-beta (new, 1 files)")


def test_background_reads_hold_back_while_any_client_waits(source: Source) -> None:
    """A client's pull that ends must not let background reads start while another still waits."""
    source.index.behaviour.faults["/simple/pt-beta/"] = ["hold"]

    async def overlapping() -> None:
        beta = asyncio.ensure_future(pull.ensure("pt-beta"))
        while source.page_requests("pt-beta") == 0:
            await asyncio.sleep(0.01)  # polling, bounded by run's deadline
        await pull.ensure("pt-alpha")
        assert pull._asked == 1  # beta's client still waits
        source.index.release.set()
        await beta
        assert pull._asked == 0

    with pulling(source) as (pull, _):
        run(overlapping())


def test_a_pull_through_dropped_without_closing_ends_its_thread(source: Source) -> None:
    # Threads of pull-throughs other tests dropped may not have ended yet: this one's is new.
    others = set(threading.enumerate())
    pull = PullThrough(source.meta, source.index.simple_url, fetch=FAST)
    run(pull.ensure("pt-alpha"))
    poll_until(
        lambda: not any(pending(head_project(source, "pt-alpha")).values()),
        "the background read, which holds the pull-through, ended",
    )
    new = set(threading.enumerate()) - others
    (thread,) = [t for t in new if t.name == "metasrv-pull-through"]
    del pull  # an app whose lifespan never ran: nothing calls close()
    poll_until(lambda: gc.collect() >= 0 and not thread.is_alive(), "the pull thread ended")


def test_a_pull_through_that_never_fetched_closes_cleanly(source: Source) -> None:
    with pulling(source) as (pull, _):
        pull.touch(ALPHA)  # not in git: nothing to re-check, and the source is never opened
        settled(pull)
        assert pull._client is None
        pull.close()  # and closing again, as the context does, is harmless
    assert not source.index.requests


def test_pulls_go_to_the_data_branch_named(source: Source) -> None:
    main_before = Storage(source.meta).resolve("main")
    with pulling(source, branch="pulled") as (pull, _):
        run(pull.ensure("pt-alpha"))
        run(pull.ensure("pt-alpha"))  # found on the data branch: not pulled again
    assert head_project(source, "pt-alpha", "pulled").releases
    assert source.page_requests("pt-alpha") == 1
    assert Storage(source.meta).resolve("main") == main_before


def test_what_pull_through_hands_the_server_equals_what_it_committed(
    source: Source, tmp_path: Path
) -> None:
    # A reader over another, empty repository: what it returns it can only have been handed.
    reader = Catalog(Storage.init(tmp_path / "elsewhere"))
    pull = PullThrough(source.meta, source.index.simple_url, reader=reader)

    async def pull_and_read() -> None:
        await pull.ensure("pt-beta")  # a first pull: every file pending
        await pull.complete("pt-beta")  # its metadata read and filled in
        await pull.ensure("pt-alpha")

    try:
        asyncio.run(pull_and_read())
    finally:
        pull.close()
    storage = Storage(source.meta)
    catalog = Catalog(storage)
    head = storage.resolve(None)
    for name in ("pt-beta", "pt-alpha"):
        normalized_name, blob_id = catalog.project_blob(head, name)
        handed = reader.parse_project(blob_id, normalized_name)
        assert handed == read_project(storage.read_blob(blob_id), name)
    assert not catalog.get_project(head, "pt-beta").releases[0].files[0].metadata_pending


def test_warming_up_opens_the_source_before_any_pull(source: Source) -> None:
    """The client's TLS context takes tens of milliseconds: not on the first request's time."""
    pull = PullThrough(source.meta, source.index.simple_url)
    try:
        assert pull._client is None
        asyncio.run(pull.warm_up())
        assert pull._client is not None
    finally:
        pull.close()


def test_pull_through_starts_by_making_the_object_folders_a_clone_lacks(source: Source) -> None:
    """A clone's objects are packed: its first loose objects would each make a folder."""
    subprocess.run(["git", "-C", str(source.meta), "gc", "-q"], check=True, timeout=60)
    objects = Path(Storage(source.meta).path) / "objects"
    assert not [p for p in objects.iterdir() if len(p.name) == 2]  # packed, folders gone
    PullThrough(source.meta, source.index.simple_url).close()
    folders = {p.name for p in objects.iterdir() if p.is_dir() and len(p.name) == 2}
    assert folders == {f"{byte:02x}" for byte in range(256)}


def test_object_folders_it_cannot_make_do_not_stop_the_start(source: Source) -> None:
    """A folder the disk refuses is left to the commits that need it; the others are made."""
    subprocess.run(["git", "-C", str(source.meta), "gc", "-q"], check=True, timeout=60)
    objects = Path(Storage(source.meta).path) / "objects"
    (objects / "00").write_bytes(b"")  # not a folder: its mkdir fails, as on a read-only disk
    PullThrough(source.meta, source.index.simple_url).close()
    folders = {p.name for p in objects.iterdir() if p.is_dir() and len(p.name) == 2}
    assert folders == {f"{byte:02x}" for byte in range(1, 256)}


def test_object_folders_take_a_shared_repositorys_group_bits(source: Source) -> None:
    """As git's own: a group that shares the repository can write objects into each."""
    subprocess.run(["git", "-C", str(source.meta), "gc", "-q"], check=True, timeout=60)
    objects = Path(Storage(source.meta).path) / "objects"
    objects.chmod(0o2775)
    PullThrough(source.meta, source.index.simple_url).close()
    assert {(objects / f"{byte:02x}").stat().st_mode & 0o7777 for byte in range(256)} == {0o2775}


def test_a_source_that_cannot_open_fails_its_pulls_not_the_warm_up(tmp_path: Path) -> None:
    """A source folder that is gone must not stop the server starting: each pull says why."""
    meta = create_meta_repository(tmp_path / "meta")
    pull = PullThrough(meta.path, str(tmp_path / "gone"))
    try:
        asyncio.run(pull.warm_up())
        assert pull._client is not None
        assert pull._sources is None
        with pytest.raises(SourceError, match="neither an http"):
            asyncio.run(pull.ensure("anything"))
    finally:
        pull.close()


def test_an_https_source_loads_its_certificates_at_the_warm_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in the first pull's time: a certificate file gone after the start is never read."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    served = tmp_path / "served.git"
    subprocess.run(["git", "init", "-q", "--bare", str(served)], check=True, timeout=60)
    page = served / "simple" / "pt-alpha" / "index.html"
    page.parent.mkdir(parents=True)
    digest = hashlib.sha256(b"never downloaded").hexdigest()
    filename = "pt_alpha-1.0-py3-none-any.whl"
    page.write_text(f'<a href="../../files/{filename}#sha256={digest}">{filename}</a>')
    meta = create_meta_repository(tmp_path / "meta")
    with tls_remote(served, tmp_path / "certificates") as remote:
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "certificates" / "ca.pem"))
        pull = PullThrough(meta.path, f"{remote.url}simple/")
        try:
            asyncio.run(pull.warm_up())
            monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "gone.pem"))
            asyncio.run(pull.ensure("pt-alpha"))
        finally:
            pull.close()
    storage = Storage(meta.path)
    project = Catalog(storage).get_project(storage.resolve(None), "pt-alpha")
    assert [f.filename for r in project.releases for f in r.files] == [filename]
