"""Pull-through's metadata reads: what a client waits for, and what is left to the background."""

from __future__ import annotations

import asyncio
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import httpx
from packaging.version import Version

from metasrv.index.pullthrough import PullThrough
from tests.conftest import running_server
from tests.deadlines import THREAD_DEADLINE_SECONDS, poll_until
from tests.distributions import build_wheel
from tests.test_pullthrough import DEADLINE_SECONDS, JSON, Source, source
from tests.test_pullthrough_mutants import ALPHA, FAST, head_project, pending, run

__all__ = ["source"]  # the fixture, shared with the end-to-end pull-through tests

ALPHA_DOCUMENTS = [f"/files/pt_alpha-{v}-py3-none-any.whl.metadata" for v in ("1.0", "2.0")]


def test_a_clients_pull_does_not_queue_behind_a_background_read(source: Source) -> None:
    """A background batch asks for all its files at once: it must not take clients' slots."""
    for path in ALPHA_DOCUMENTS:
        source.index.behaviour.faults[path] = ["hold"]  # answered once the test releases them
    # Two slots for clients' work, as many as the background read's two held requests, which
    # outlast run's deadline: taking clients' slots, they would hold pt-beta's pull past it.
    fetch = replace(FAST, concurrency=2, timeout_seconds=THREAD_DEADLINE_SECONDS)
    pull = PullThrough(source.meta, source.index.simple_url, fetch=fetch)
    try:
        run(pull.ensure("pt-alpha"))
        poll_until(
            lambda: all((path, None) in source.index.requests for path in ALPHA_DOCUMENTS),
            "the background read of pt-alpha's documents, held at the source",
        )
        run(pull.ensure("pt-beta"))  # in slots of its own, or it waits out run's deadline
        run(pull.complete("pt-beta"))  # a read a client waits for: clients' slots too
        assert pending(head_project(source, "pt-beta")) == {"1.0": False}
        assert pending(head_project(source, "pt-alpha")) == {"1.0": True, "2.0": True}
    finally:
        source.index.release.set()
        pull.close()


def test_a_re_check_does_not_take_a_clients_slot(source: Source) -> None:
    """A restart's first reads re-check every project they read, each in the background."""
    fetch = replace(FAST, concurrency=1, timeout_seconds=THREAD_DEADLINE_SECONDS)
    pull = PullThrough(source.meta, source.index.simple_url, fetch=fetch, refresh=0)
    try:
        run(pull.ensure("pt-alpha"))
        source.index.behaviour.faults["/simple/pt-alpha/"] = ["hold"]
        pull.touch(ALPHA)  # re-checked at once, and held at the source
        poll_until(lambda: source.page_requests("pt-alpha") == 2, "the re-check, held")
        run(pull.ensure("pt-beta"))  # in the one slot clients have, or it waits out the deadline
        assert [str(r.version) for r in head_project(source, "pt-beta").releases] == ["1.0"]
    finally:
        source.index.release.set()
        pull.close()


def two_wheels(source: Source) -> tuple[Path, Path]:
    """Add pt-two 1.0 in two wheels; have the source serve no PEP 658 file, only ranges."""
    source.index.behaviour.pep658 = False
    first = build_wheel(source.archives, "pt-two", "1.0")
    second = first.with_name("pt_two-1.0-py2.py3-none-any.whl")
    shutil.copy(first, second)
    return first, second


def test_reads_of_two_wheels_of_one_release_each_read_their_own(source: Source) -> None:
    """One file's read waits neither for the rest of its release nor for another file's read."""
    first, second = two_wheels(source)
    fetch = replace(FAST, timeout_seconds=THREAD_DEADLINE_SECONDS)
    pull = PullThrough(source.meta, source.index.simple_url, fetch=fetch)

    async def both() -> None:
        held = asyncio.ensure_future(pull.complete("pt-two", Version("1.0"), first.name))
        while not any(path == f"/files/{first.name}" for path, _ in source.index.requests):
            await asyncio.sleep(0.01)  # polling, bounded by run's deadline
        await pull.complete("pt-two", Version("1.0"), second.name)
        files = {f.filename: f for f in head_project(source, "pt-two").releases[0].files}
        assert (files[first.name].metadata_pending, files[second.name].metadata_pending) == (
            True,
            False,
        )
        source.index.release.set()
        await held

    try:
        run(pull.ensure("pt-two"))
        source.index.behaviour.faults[f"/files/{first.name}"] = ["hold"] * 8
        run(both())
    finally:
        source.index.release.set()
        pull.close()
    assert not any(pending(head_project(source, "pt-two")).values())


def test_a_wheels_metadata_asked_for_waits_for_that_wheel_not_its_release(source: Source) -> None:
    """uv asks for one wheel's .metadata; a release may have 170 wheels without PEP 658 files."""
    asked, other = two_wheels(source)
    # Every request for the other wheel is held until the end: waiting for it, this would not
    # be answered within the client's deadline.
    source.index.behaviour.faults[f"/files/{other.name}"] = ["hold"] * 8
    with (
        running_server(["--repo", str(source.meta)]) as server,
        httpx.Client(base_url=server.url, timeout=DEADLINE_SECONDS) as http,
    ):
        page = http.get("/simple/pt-two/", headers=JSON).json()
        assert {f["filename"]: f["core-metadata"] for f in page["files"]} == {
            asked.name: True,
            other.name: True,
        }
        answer = http.get(f"/files/pt-two/{asked.name}.metadata")
        assert answer.status_code == 200, answer.text
        with zipfile.ZipFile(asked) as archive:
            assert answer.content == archive.read("pt_two-1.0.dist-info/METADATA")
        files = {f.filename: f for f in head_project(source, "pt-two").releases[0].files}
        assert not files[asked.name].metadata_pending
        assert files[other.name].metadata_pending
        source.index.release.set()
