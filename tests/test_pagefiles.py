"""What a sync keeps of a page's files it read before: metadata, reasons, sizes, document hashes."""

from __future__ import annotations

import asyncio
import hashlib
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest

from metasrv.http.app import create_app
from metasrv.index.client import FetchOptions, FolderSource
from metasrv.index.pagefiles import WHEELS_GIVE_METADATA, declared_sha256, read_page_files
from metasrv.index.pages import MIME_SIMPLE_JSON, ProjectPage, SourceFile
from metasrv.index.sync import SyncOptions, sync
from metasrv.model import DistFile, MetadataStatus
from metasrv.names import core_metadata_path
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from tests.builders import make_file
from tests.conftest import AsgiClient
from tests.distributions import build_sdist, build_wheel, metadata_text
from tests.indexserver import IndexBehaviour, serve_index

WHEEL = "demo-1.0-py3-none-any.whl"
SDIST = "demo-1.0.tar.gz"
PAGE_SHA = "ef" * 32
HASHES = {"sha256": "aa" * 32}


def listed(filename: str, core_metadata: dict[str, str] | bool = False) -> SourceFile:
    """Return a file as a page lists it, with no size."""
    url = f"https://files.test/{filename}"
    return SourceFile(filename, url, HASHES, core_metadata=core_metadata)


def synced(filename: str, **fields: Any) -> DistFile:
    """Return a file a sync read before, with the same bytes as the page's."""
    return replace(make_file(filename), hashes=HASHES, **fields)


def read_again(tmp_path: Path, page: ProjectPage, known: dict[str, DistFile]) -> list[DistFile]:
    """Return the page's files as a sync of a folder source reads them, given what it knew."""
    documents: dict[str, bytes] = {}
    read = asyncio.run(read_page_files(FolderSource(tmp_path), page, known, documents))
    assert documents == {}  # nothing was read: everything was known
    return [dist_file for dist_file, _, _ in read]


def test_files_with_unchanged_bytes_keep_what_was_read_of_them(tmp_path: Path) -> None:
    built = synced(
        SDIST,
        size=777,
        metadata_status=MetadataStatus.BUILT,
        metadata_reason="built",
        metadata_built_on="2026-01-01T00:00:00Z",
    )
    page = ProjectPage("demo", (listed(WHEEL), listed(SDIST)))
    wheel, sdist = read_again(tmp_path, page, {WHEEL: synced(WHEEL, size=5), SDIST: built})
    # What the page lists comes from the page; what was read, from before: not read again.
    assert sdist == replace(built, upload_time=None)
    assert wheel.size == 5  # the page gives none: what was known


@pytest.mark.parametrize(
    ("known", "expected_sha"),
    [
        ({}, PAGE_SHA),  # synced before documents were kept: the page's document hash
        ({"core_metadata_sha256": "12" * 32}, "12" * 32),  # a hash already: kept
        ({"metadata": None, "metadata_status": MetadataStatus.UNUSABLE}, None),
        ({"metadata_status": MetadataStatus.BUILT}, None),  # built: not the source's document
    ],
)
def test_a_file_read_before_documents_were_kept_takes_the_pages_document_hash(
    tmp_path: Path, known: dict[str, Any], expected_sha: str | None
) -> None:
    page = ProjectPage("demo", (listed(WHEEL, core_metadata={"sha256": PAGE_SHA.upper()}),))
    (wheel,) = read_again(tmp_path, page, {WHEEL: synced(WHEEL, **known)})
    assert wheel.core_metadata_sha256 == expected_sha
    assert wheel.core_metadata_stored is False


def test_a_file_of_a_folder_source_gets_no_document_hash(tmp_path: Path) -> None:
    source_file = listed(WHEEL, {"sha256": PAGE_SHA})._replace(url=f"file:///files/{WHEEL}")
    known = synced(WHEEL, url=source_file.url)
    (wheel,) = read_again(tmp_path, ProjectPage("demo", (source_file,)), {WHEEL: known})
    assert wheel.core_metadata_sha256 is None


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ({"sha256": PAGE_SHA.upper()}, PAGE_SHA),
        ({"sha512": "00" * 64}, None),
        ({"sha256": "not a digest"}, None),
        (True, None),
        (False, None),
    ],
)
def test_a_pages_document_hash_is_taken_only_when_it_is_a_sha256(
    declared: dict[str, str] | bool, expected: str | None
) -> None:
    assert declared_sha256(listed(WHEEL, core_metadata=declared)) == expected


def test_what_a_page_lists_of_a_file_comes_from_the_page(tmp_path: Path) -> None:
    """Upload time, Requires-Python and yanks are the page's now, not those of the last sync."""
    page_file = listed(WHEEL)._replace(
        upload_time="2026-02-03T04:05:06Z",
        requires_python=">=3.12",
        yanked="broken build",
        size=4321,
    )
    (wheel,) = read_again(tmp_path, ProjectPage("demo", (page_file,)), {WHEEL: synced(WHEEL)})
    assert (wheel.upload_time, wheel.requires_python, wheel.yanked, wheel.size) == (
        "2026-02-03T04:05:06Z",
        ">=3.12",
        "broken build",
        4321,
    )
    assert (wheel.url, dict(wheel.hashes)) == (page_file.url, HASHES)


# Against a real index: what a sync asks of it for sizes, and the documents it keeps.
FAST = SyncOptions(fetch=FetchOptions(retries=1, backoff_seconds=0.01, timeout_seconds=5))


def synced_files(meta: Storage, name: str) -> dict[str, DistFile]:
    """Return the files a sync stored for ``name``, by file name."""
    releases = Catalog(meta).get_project(meta.resolve(None), name).releases
    return {dist_file.filename: dist_file for release in releases for dist_file in release.files}


def synced_file(meta: Storage, name: str) -> DistFile:
    """Return the one file of the one release a sync stored for ``name``."""
    (dist_file,) = synced_files(meta, name).values()
    return dist_file


@pytest.fixture
def meta(tmp_path: Path) -> Storage:
    """Return an empty meta repository."""
    return Storage.init(tmp_path / "meta")


@pytest.mark.parametrize("pep658", [False, True], ids=["read-from-the-wheel", "pep658"])
def test_a_size_a_read_gave_costs_no_head_request_and_the_others_one(
    meta: Storage, tmp_path: Path, pep658: bool
) -> None:
    """An HTML page gives no sizes (PEP 700 is JSON only): reading the wheel gives its size."""
    wheel = build_wheel(tmp_path, "demo", "1.0", padding=50_000)
    with serve_index(tmp_path, IndexBehaviour(json=False, pep658=pep658)) as index:
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 0
    assert synced_file(meta, "demo").size == wheel.stat().st_size
    # A PEP 658 file says nothing of the wheel's size: one HEAD asks for it.
    assert index.heads == ([f"/files/{wheel.name}"] if pep658 else [])


def test_a_size_the_page_lists_is_kept_over_the_size_read(meta: Storage, tmp_path: Path) -> None:
    build_wheel(tmp_path, "demo", "1.0", padding=50_000)

    def listed_size(document: dict[str, Any]) -> None:
        document["files"][0]["size"] = 4321

    behaviour = IndexBehaviour(pep658=False, pages={"demo": listed_size})
    with serve_index(tmp_path, behaviour) as index:
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 0
    assert synced_file(meta, "demo").size == 4321  # what the page says, as the page says it
    assert index.heads == []


def test_a_file_with_unusable_metadata_still_gets_its_size(meta: Storage, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "demo", "1.0", metadata=metadata_text("other", "1.0"))
    with serve_index(tmp_path, IndexBehaviour(json=False)) as index:
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 1
    dist_file = synced_file(meta, "demo")
    assert dist_file.metadata_status is MetadataStatus.UNUSABLE
    assert dist_file.size == wheel.stat().st_size


def test_metadata_read_from_a_wheel_is_kept_in_git_and_served_as_its_pep_658_file(
    meta: Storage, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path, "demo", "1.0", requires_dist=["alpha>=1"])
    with zipfile.ZipFile(wheel) as archive:
        document = archive.read("demo-1.0.dist-info/METADATA")
    digest = hashlib.sha256(document).hexdigest()
    with serve_index(tmp_path, IndexBehaviour(pep658=False)) as index:
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 0
    dist_file = synced_file(meta, "demo")
    assert (dist_file.core_metadata_sha256, dist_file.core_metadata_stored) == (digest, True)
    assert meta.read(meta.resolve(None), core_metadata_path(digest)) == document
    assert served_metadata(meta, wheel.name) == (digest, 200, document)


def served_metadata(meta: Storage, filename: str) -> tuple[str, int, bytes]:
    """Return the document hash our page lists for a file, and what its .metadata URL serves."""
    client = AsgiClient(create_app(meta.path))
    page = client.get("/simple/demo/", headers={"accept": MIME_SIMPLE_JSON}).json()
    listed = next(entry for entry in page["files"] if entry["filename"] == filename)
    served = client.get(urljoin("http://metasrv.test/simple/demo/", listed["url"]) + ".metadata")
    return listed["core-metadata"]["sha256"], served.status_code, served.content


def test_a_document_read_before_is_still_served_once_the_page_is_read_again(
    meta: Storage, tmp_path: Path
) -> None:
    """The source serves no PEP 658 file: what a sync kept in git is what clients get, still."""
    wheel = build_wheel(tmp_path, "demo", "1.0")
    with zipfile.ZipFile(wheel) as archive:
        document = archive.read("demo-1.0.dist-info/METADATA")
    with serve_index(tmp_path, IndexBehaviour(pep658=False)) as index:
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 0
        build_wheel(tmp_path, "demo", "2.0")  # the page changes; 1.0's bytes do not
        index.requests.clear()
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 0
    assert not any(path == f"/files/{wheel.name}" for path, _ in index.requests)  # not read again
    kept = synced_files(meta, "demo")[wheel.name]
    digest = hashlib.sha256(document).hexdigest()
    assert (kept.core_metadata_sha256, kept.core_metadata_stored) == (digest, True)
    assert served_metadata(meta, wheel.name) == (digest, 200, document)


def test_a_file_whose_metadata_names_another_project_is_unusable_and_says_so(
    meta: Storage, tmp_path: Path
) -> None:
    build_wheel(tmp_path, "demo", "1.0", metadata=metadata_text("other", "1.0"))
    with serve_index(tmp_path) as index:
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 1
    unusable = synced_file(meta, "demo")
    assert (unusable.metadata, unusable.metadata_status) == (None, MetadataStatus.UNUSABLE)
    assert unusable.metadata_reason == "metadata says 'other' '1.0', the file name 'demo' '1.0'"


def test_an_sdist_beside_wheels_that_gave_its_metadata_is_not_read_but_still_gets_a_size(
    meta: Storage, tmp_path: Path
) -> None:
    """Reading an sdist is often a whole download: skipped where its release's wheels said all."""
    wheel = build_wheel(tmp_path, "demo", "1.0")
    beside = build_sdist(tmp_path, "demo", "1.0")
    alone = build_sdist(tmp_path, "demo", "2.0", requires_dist=["alpha>=1"])
    with serve_index(tmp_path, IndexBehaviour(json=False, pep658=False)) as index:
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 0
    files = synced_files(meta, "demo")
    skipped = files[beside.name]
    assert (skipped.metadata, skipped.metadata_status, skipped.metadata_reason) == (
        None,
        MetadataStatus.SKIPPED,
        WHEELS_GIVE_METADATA,
    )
    assert skipped.size == beside.stat().st_size  # an HTML page gives none: one HEAD asks
    assert index.heads == [f"/files/{beside.name}"]
    assert not any(path == f"/files/{beside.name}" for path, _ in index.requests)
    read_alone = files[alone.name]  # no wheel of 2.0 says anything: the sdist is read
    assert read_alone.metadata_status is None
    assert read_alone.metadata is not None
    assert read_alone.metadata.requires_dist == ("alpha>=1",)
    assert files[wheel.name].metadata is not None


def test_a_file_whose_fetch_failed_says_why_and_is_read_again_by_the_next_sync(
    meta: Storage, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path, "demo", "1.0")
    failing = IndexBehaviour(pep658=False, faults={f"/files/{wheel.name}": ["500", "500"]})
    with serve_index(tmp_path, failing) as index:
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 1
        failed = synced_file(meta, "demo")
        assert (failed.metadata, failed.metadata_status) == (None, MetadataStatus.FETCH_FAILED)
        assert failed.metadata_reason is not None
        assert "500" in failed.metadata_reason  # the source's answer, for whoever looks
        assert failed.size == wheel.stat().st_size  # as the page lists it
        again = sync(meta, index.simple_url, ["demo"], FAST)  # the page is unchanged
    assert again.exit_code == 0
    read = synced_file(meta, "demo")
    assert (read.metadata_status, read.metadata_reason) == (None, None)
    assert read.metadata is not None


def test_an_sdist_without_static_metadata_is_kept_as_dynamic_with_the_reason(
    meta: Storage, tmp_path: Path
) -> None:
    """PEP 643: metadata before 2.2 declares no static fields, so only a build can tell."""
    sdist = build_sdist(tmp_path, "demo", "1.0", metadata_version="2.1")
    with serve_index(tmp_path, IndexBehaviour(pep658=False)) as index:
        assert sync(meta, index.simple_url, ["demo"], FAST).exit_code == 0
    dynamic = synced_file(meta, "demo")
    assert (dynamic.filename, dynamic.metadata, dynamic.metadata_status) == (
        sdist.name,
        None,
        MetadataStatus.DYNAMIC,
    )
    assert dynamic.metadata_reason == "sdist metadata 2.1 does not declare static fields"
