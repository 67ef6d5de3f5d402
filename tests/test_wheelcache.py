"""No page request downloads a wheel: rewritten wheels are prepared in the background."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from metasrv.cli.main import main
from metasrv.errors import InvalidArchive, SourceError, Unavailable
from metasrv.http import wheelcache
from metasrv.http.app import create_app
from metasrv.http.views import SimpleApi
from metasrv.http.wheelcache import WheelCache
from metasrv.model import CoreMetadata, DistFile
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from metasrv.understandings.registry import Understandings
from tests.conftest import AsgiClient, running_server
from tests.deadlines import poll_until
from tests.distributions import build_wheel, metadata_text
from tests.indexserver import IndexBehaviour, LocalIndex, serve_index
from tests.test_installers import RELAX
from tests.test_understandings import add_rules, register

JSON = {"Accept": "application/vnd.pypi.simple.v1+json"}
DEADLINE_SECONDS = 60
WHEEL = "mtsv_beta-1.0-py3-none-any.whl"


@contextmanager
def synced_with_relaxed(tmp_path: Path) -> Iterator[tuple[LocalIndex, Storage]]:
    """Sync mtsv-beta 1.0 (alpha below 2) and mtsv-alpha 2.0 from a local index; register the
    understanding ``relaxed``, with no rules yet, in the meta repository."""
    archives = tmp_path / "archives"
    archives.mkdir()
    build_wheel(archives, "mtsv-alpha", "2.0")
    # A field metasrv does not model, which a rewritten wheel's METADATA keeps.
    document = metadata_text("mtsv-beta", "1.0", requires_dist=["mtsv-alpha<2"])
    document = document.replace("Version: 1.0\n", "Version: 1.0\nSummary: beta\n")
    build_wheel(archives, "mtsv-beta", "1.0", metadata=document)
    with serve_index(archives, IndexBehaviour(pep658=False)) as index:
        assert main(["init", str(tmp_path / "meta"), "--source", index.simple_url]) == 0
        assert main(["sync", "--all", "--repo", str(tmp_path / "meta")]) == 0
        meta = Storage(tmp_path / "meta")
        register(meta, "relaxed", ".", "understandings/relaxed")
        yield index, meta


def test_a_page_answers_while_its_rewritten_wheel_is_prepared_and_lists_it_once_ready(
    tmp_path: Path,
) -> None:
    with synced_with_relaxed(tmp_path) as (index, meta):
        add_rules(meta, "understandings/relaxed", "mtsv-beta", RELAX)
        # The source holds the wheel's download until released: the page must not wait on it.
        index.behaviour.faults[f"/files/{WHEEL}"] = ["hold"]
        # offline: no pull-through thread of its own in this process
        client = AsgiClient(create_app(meta.path, offline=True))
        page = client.get("/u/relaxed/simple/mtsv-beta/", headers=JSON)
        assert page.status_code == 200
        assert page.json()["files"] == []
        assert page.headers["cache-control"] == "public, max-age=10"
        assert page.headers["etag"].endswith('-without-1"')
        index.release.set()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not (ready := client.get("/u/relaxed/simple/mtsv-beta/", headers=JSON)).json()[
            "files"
        ]:
            assert time.monotonic() < deadline, "the rewritten wheel was never prepared"
            time.sleep(0.05)
        (wheel,) = ready.json()["files"]
        assert ready.headers["etag"] != page.headers["etag"]
        served = client.get(wheel["url"]).content
        assert hashlib.sha256(served).hexdigest() == wheel["hashes"]["sha256"]
        # Ready now: pages and the file come from disk, never from the source again.
        downloads = len(index.requests)
        for _ in range(3):
            assert client.get("/u/relaxed/simple/mtsv-beta/", headers=JSON).json() == ready.json()
        assert client.get(wheel["url"]).content == served
        assert len(index.requests) == downloads


def test_a_new_understanding_state_gets_its_wheels_rewritten_before_any_page_asks(
    tmp_path: Path,
) -> None:
    with synced_with_relaxed(tmp_path) as (index, meta):
        arguments = ["--repo", str(meta.path), "--offline", "--quiet", "--fetch-interval", "0.2"]
        with running_server(arguments) as server:
            assert index.downloads(WHEEL) == 0  # the understanding changes nothing yet
            add_rules(meta, "understandings/relaxed", "mtsv-beta", RELAX)
            # The rule's state is served: its wheel is rewritten with no page asking for it.
            poll_until(lambda: index.downloads(WHEEL) == 1, "the rewritten wheel was prepared")
            page = httpx.get(f"{server.url}/u/relaxed/simple/mtsv-beta/", headers=JSON)
            assert page.status_code == 200
            assert len(page.json()["files"]) == 1
            assert not page.headers["etag"].endswith('-without-1"')
            assert index.downloads(WHEEL) == 1


def test_preparing_rewrites_starts_each_new_wheel_once_past_what_it_cannot_read(
    tmp_path: Path,
) -> None:
    with synced_with_relaxed(tmp_path) as (index, meta):
        api = SimpleApi(Catalog(meta), Understandings(meta), WheelCache(tmp_path / "wheels"))
        assert asyncio.run(api.prepare_rewrites()) == 0  # no rules yet: nothing to rewrite
        # A registration that cannot be mounted, and a rule file of a project the data lacks,
        # each listed before what does get rewritten.
        register(meta, "absent", "https://git.test/absent.git", "rules")
        add_rules(meta, "understandings/relaxed", "absent", RELAX)
        add_rules(meta, "understandings/relaxed", "mtsv-beta", RELAX)
        assert asyncio.run(api.prepare_rewrites()) == 1
        poll_until(lambda: index.downloads(WHEEL) == 1, "the rewritten wheel was prepared")
        assert asyncio.run(api.prepare_rewrites()) == 0  # the same state: nothing new
        meta.commit("main", {"understandings/broken.toml": b"not = [toml"}, "break")
        assert asyncio.run(api.prepare_rewrites()) == 0  # nothing read: the refresh says why


def test_a_rewritten_wheels_metadata_file_is_the_metadata_inside_it(tmp_path: Path) -> None:
    with synced_with_relaxed(tmp_path) as (_, meta):
        add_rules(meta, "understandings/relaxed", "mtsv-beta", RELAX)
        client = AsgiClient(create_app(meta.path, offline=True))
        metadata = client.get(f"/u/relaxed/files/mtsv-beta/{WHEEL}.metadata").content
        wheel = client.get(f"/u/relaxed/files/mtsv-beta/{WHEEL}").content
        with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
            assert archive.read("mtsv_beta-1.0.dist-info/METADATA") == metadata
        assert b"Summary: beta\n" in metadata
        assert b"Requires-Dist: mtsv-alpha\n" in metadata
        (listed,) = client.get("/u/relaxed/simple/mtsv-beta/", headers=JSON).json()["files"]
        assert listed["core-metadata"] == {"sha256": hashlib.sha256(metadata).hexdigest()}


def test_a_rewrite_that_fails_says_why_and_stands_for_a_while(tmp_path: Path) -> None:
    with synced_with_relaxed(tmp_path) as (index, meta):
        add_rules(meta, "understandings/relaxed", "mtsv-beta", RELAX)
        folder = tmp_path / "wheels"
        folder.write_text("a file where the cache's folder goes")  # the download is all it gets
        lines: list[str] = []
        cache = WheelCache(folder, log=lines.append)
        api = SimpleApi(Catalog(meta), Understandings(meta), cache)
        mount = api.mount(None, "relaxed")
        for _ in range(2):
            page, left_out = asyncio.run(api.project(mount, "mtsv-beta"))
            assert (page["files"], left_out) == ([], 1)
        assert index.downloads(WHEEL) == 1  # the second page asked the source nothing
    (line,) = lines
    # Not one of ours: the exception's type names it.
    assert line.startswith(f"rewritten wheel {WHEEL!r}: FileExistsError: [Errno 17] File exists")
    assert line.endswith("; left out of pages until one asks again after 60 s")


def _beta_wheel(meta: Storage) -> DistFile:
    """Return mtsv-beta 1.0's wheel as the data holds it: its source URL, hash and size."""
    (release,) = Catalog(meta).get_project(meta.resolve(None), "mtsv-beta").releases
    (wheel,) = release.files
    return wheel


def _relaxed(wheel: DistFile, bound: str = "") -> CoreMetadata:
    assert wheel.metadata is not None
    return replace(wheel.metadata, requires_dist=(f"mtsv-alpha{bound}",))


def _counted(folder: Path) -> int:
    """Return what the cache counts of a folder's rewrites: each wheel and its METADATA."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".whl", ".metadata"))


def test_the_disk_budget_holds_what_was_written_before_and_what_a_wheel_needs(
    tmp_path: Path,
) -> None:
    with synced_with_relaxed(tmp_path) as (index, meta):
        wheel = _beta_wheel(meta)
        assert wheel.size is not None
        needs = wheel.size * 2  # the original and its rewrite, at most
        folder = tmp_path / "cache" / "wheels"  # neither folder there yet
        with pytest.raises(Unavailable, match=f"{WHEEL}: the rewritten-wheel cache is full"):
            asyncio.run(WheelCache(folder, max_bytes=needs - 1).get(wheel, _relaxed(wheel)))
        cache = WheelCache(folder, max_bytes=needs)  # exactly what it needs: it fits
        first = asyncio.run(cache.get(wheel, _relaxed(wheel)))
        assert (first.size, index.downloads(WHEEL)) == (first.path.stat().st_size, 1)
        written = _counted(folder)
        # A second rewrite of the wheel fits only if what the first wrote is counted right.
        cache.max_bytes = written + needs
        assert asyncio.run(cache.get(wheel, _relaxed(wheel, "<3"))).path != first.path
        third = _relaxed(wheel, "<4")
        cache.max_bytes = _counted(folder) + needs - 1
        with pytest.raises(Unavailable, match="cache is full"):
            asyncio.run(cache.get(wheel, third))
        # A new process counts what the folder holds, and finds the rewrites ready.
        again = WheelCache(folder, max_bytes=_counted(folder) + needs - 1)
        assert again.ready(wheel, _relaxed(wheel)) == first
        with pytest.raises(Unavailable, match="cache is full"):
            asyncio.run(again.get(wheel, third))
    assert index.downloads(WHEEL) == 2


def test_a_wheel_without_a_hash_or_with_another_or_too_large_is_not_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with synced_with_relaxed(tmp_path) as (_, meta):
        wheel = _beta_wheel(meta)
        cache = WheelCache(tmp_path / "wheels")
        cases = {
            "no sha256 to verify the original against": replace(wheel, hashes={}),
            "the downloaded wheel's sha256 is not the one on record": replace(
                wheel, hashes={"sha256": "0" * 64}
            ),
        }
        for error, changed in cases.items():
            with pytest.raises(SourceError, match=error):
                asyncio.run(cache.get(changed, _relaxed(changed)))
        monkeypatch.setattr(wheelcache, "MAX_PATCHED_WHEEL_BYTES", 100)
        with pytest.raises(InvalidArchive, match="larger than 100 bytes"):
            asyncio.run(cache.get(wheel, _relaxed(wheel)))


def test_one_job_per_wheel_joined_while_it_runs_and_kept_once_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with synced_with_relaxed(tmp_path) as (index, meta):
        wheel, cache = _beta_wheel(meta), WheelCache(tmp_path / "wheels")
        index.behaviour.faults[f"/files/{WHEEL}"] = ["hold"]
        first = cache.prepare(wheel, _relaxed(wheel))
        assert cache.prepare(wheel, _relaxed(wheel)) is first
        assert not first.done()  # joined without waiting for it
        index.release.set()
        first.result(timeout=DEADLINE_SECONDS)
        assert cache.prepare(wheel, _relaxed(wheel)) is first  # done: nothing started again
        # A failure stands for RETRY_AFTER_SECONDS; after it, the next page tries again.
        monkeypatch.setattr(wheelcache, "RETRY_AFTER_SECONDS", 0.0)
        failing = replace(wheel, hashes={"sha256": "0" * 64})
        failed = cache.prepare(failing, _relaxed(failing))
        assert isinstance(failed.exception(timeout=DEADLINE_SECONDS), SourceError)
        retried = cache.prepare(failing, _relaxed(failing))
        assert retried is not failed
        assert isinstance(retried.exception(timeout=DEADLINE_SECONDS), SourceError)
    assert index.downloads(WHEEL) == 3
