"""A source that misbehaves in every way we know: each fault is recorded, the rest lands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import NormalizedName

from metasrv.cli.main import main
from metasrv.index.client import FetchOptions
from metasrv.index.sync import SyncOptions, sync
from metasrv.index.wholeindex import sync_all
from metasrv.model import MetadataStatus
from metasrv.names import project_path
from metasrv.repo.catalog import DATA_ROOT, Catalog
from metasrv.repo.storage import Storage
from tests.distributions import build_sdist, build_sdist_bomb, build_wheel, metadata_text
from tests.indexserver import IndexBehaviour, serve_index

# One retry keeps the rows fast; the request deadline stays far above a healthy answer's time.
OPTIONS = SyncOptions(fetch=FetchOptions(retries=1, backoff_seconds=0.01, timeout_seconds=2))
VICTIM_PAGE = "/simple/victim/"
VICTIM_WHEEL = "/files/victim-1.0-py3-none-any.whl"
VICTIM_PATH = f"{DATA_ROOT}/{project_path(NormalizedName('victim'))}"


def _set_file_value(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        document["files"][0][key] = value

    return edit


def _set_page_value(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        document[key] = value

    return edit


def _add_version(version: str) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        long_name = f"victim-{version}-py3-none-any.whl"
        document["files"].append({**document["files"][0], "filename": long_name})
        document["versions"] = [version, "1.0"]

    return edit


def _wheel(folder: Path) -> Path:
    return build_wheel(folder, "victim", "1.0", requires_dist=["alpha"])


@dataclass(frozen=True)
class Fault:
    """A way the source fails for the project ``victim``, and what the sync must record."""

    id: str
    make: Callable[[Path], object] = _wheel
    faults: tuple[str, ...] = ()  # faults of the victim's page, or of its wheel for huge-total
    page_edit: Callable[[dict[str, Any]], None] | None = None
    project_error: str | None = None
    file_error: str | None = None
    skipped: str | None = None
    pep658: bool = True


FAULTS = [
    Fault("size-string", page_edit=_set_file_value("size", "123"), project_error="size must"),
    Fault("yanked-1", page_edit=_set_file_value("yanked", 1), project_error="yanked must"),
    Fault(
        "upload-time-int",
        page_edit=_set_file_value("upload-time", 12345),
        project_error="upload-time must",
    ),
    Fault(
        "requires-python-int",
        page_edit=_set_file_value("requires-python", 3),
        project_error="requires-python must",
    ),
    Fault(
        "hashes-list",
        page_edit=_set_file_value("hashes", ["sha256", "00"]),
        project_error="hashes must be an object",
    ),
    Fault(
        "hash-not-hex",
        page_edit=_set_file_value("hashes", {"sha256": "<script>"}),
        project_error="no hex digest",
    ),
    Fault("files-object", page_edit=_set_page_value("files", {}), project_error="files must"),
    Fault("name-null", page_edit=_set_page_value("name", None), project_error="name must"),
    Fault("500-after-retries", faults=("500",) * 4, project_error="HTTP 500 after 2 attempts"),
    Fault("invalid-json", faults=("garbage",), project_error="invalid JSON"),
    # "\ud800" escapes half a character: no string holds it, and no project file could.
    Fault(
        "lone-surrogate",
        page_edit=_set_file_value("requires-python", "\ud800"),
        project_error="invalid JSON",
    ),
    Fault("truncated", faults=("truncate",) * 4, project_error="after 2 attempts"),
    Fault("not-http", faults=("not-http",) * 4, project_error="RemoteProtocolError"),
    Fault("over-64MB", faults=("oversize",), project_error="larger than 67108864 bytes"),
    Fault("gzip-inflating-past-64MB", faults=("gzip-bomb",), project_error="larger than 67108864"),
    Fault("zstd-unasked", faults=("zstd-bomb",), project_error="content-encoding 'zstd'"),
    Fault("redirect-loop", faults=("redirect-loop",) * 25, project_error="TooManyRedirects"),
    Fault(
        "redirect-to-ftp",
        faults=("redirect-ftp",),
        project_error="UnsupportedProtocol: unsupported protocol 'ftp://'",
    ),
    Fault("bad-content-encoding", faults=("bad-encoding",), project_error="DecodingError"),
    Fault("trickle", faults=("trickle",) * 4, project_error="no whole answer within 2 s"),
    Fault(
        "4301-digit-version",
        page_edit=_add_version("1" * 4301),
        project_error="filename is longer than 4096 characters",
    ),
    Fault(
        "150-digit-version",
        page_edit=_add_version("1" * 150),
        skipped="is no valid wheel or sdist file name",
    ),
    Fault(
        "metadata-version-2.x",
        make=lambda folder: build_sdist(folder, "victim", "1.0", metadata_version="2.x"),
        file_error="invalid Metadata-Version '2.x'",
    ),
    Fault(
        "non-utf8-metadata",
        make=lambda folder: build_wheel(
            folder,
            "victim",
            "1.0",
            metadata=metadata_text("victim", "1.0", requires_dist=["caf\xe9"]).encode("latin-1"),
        ),
        file_error="metadata is not UTF-8",
        pep658=False,
    ),
    Fault(
        "wheel-name-mismatch",
        make=lambda folder: build_wheel(
            folder, "victim", "1.0", metadata=metadata_text("other", "1.0")
        ),
        file_error="metadata says 'other' '1.0', the file name 'victim' '1.0'",
    ),
    Fault(
        "wheel-version-mismatch",
        make=lambda folder: build_wheel(
            folder, "victim", "1.0", metadata=metadata_text("victim", "2.0")
        ),
        file_error="metadata says 'victim' '2.0'",
        pep658=False,
    ),
    Fault(
        "5000-digit-content-range",
        faults=("huge-total",),
        file_error="206 without a Content-Range total",
        pep658=False,
    ),
    Fault(
        "sdist-inflating-to-1GiB",
        make=lambda folder: build_sdist_bomb(folder, "victim", "1.0", 1024 * 1024 * 1024),
        file_error="inflates past",
    ),
]


@pytest.fixture
def meta(tmp_path: Path) -> Storage:
    """Return an empty meta repository with a working tree."""
    assert main(["init", str(tmp_path / "meta")]) == 0
    return Storage(tmp_path / "meta")


def _assert_every_project_reads(storage: Storage) -> None:
    """Every committed project file is one the server can read."""
    catalog, head = Catalog(storage), storage.resolve(None)
    for name in catalog.list_projects(head):
        catalog.get_project(head, name)


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.id for fault in FAULTS])
def test_a_fault_of_one_project_is_recorded_and_the_others_land(
    meta: Storage, tmp_path: Path, fault: Fault
) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    build_wheel(folder, "alpha", "1.0")
    fault.make(folder)
    behaviour = IndexBehaviour(
        pep658=fault.pep658,
        faults={VICTIM_WHEEL if "huge-total" in fault.faults else VICTIM_PAGE: list(fault.faults)},
        pages={"victim": fault.page_edit} if fault.page_edit else {},
    )
    with serve_index(folder, behaviour) as index:
        summary = sync_all(meta, index.simple_url, OPTIONS)
    assert summary.exit_code == 1
    _assert_every_project_reads(meta)
    catalog, head = Catalog(meta), meta.resolve(None)
    assert catalog.get_project(head, "alpha").releases[0].version_text == "1.0"
    if fault.project_error is not None:
        (failure,) = summary.failed_projects
        assert failure.startswith("victim: ")
        assert fault.project_error in failure
        assert "victim" not in catalog.list_projects(head)
        return
    assert summary.failed_projects == []
    (release,) = catalog.get_project(head, "victim").releases
    if fault.skipped is not None:
        (skipped,) = summary.skipped_files
        assert fault.skipped in skipped
        assert [f.filename for f in release.files] == ["victim-1.0-py3-none-any.whl"]
    if fault.file_error is not None:
        (dist_file,) = release.files
        assert dist_file.metadata is None
        assert dist_file.metadata_status is MetadataStatus.UNUSABLE
        assert fault.file_error in (dist_file.metadata_reason or "")


def test_a_project_that_fails_keeps_its_last_good_state(meta: Storage, tmp_path: Path) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    _wheel(folder)
    with serve_index(folder) as index:
        assert sync_all(meta, index.simple_url, OPTIONS).exit_code == 0
        good = meta.read(meta.resolve(None), VICTIM_PATH)
        build_wheel(folder, "victim", "2.0")
        index.behaviour.pages["victim"] = _set_file_value("yanked", 1)
        summary = sync_all(meta, index.simple_url, OPTIONS)
    assert summary.exit_code == 1
    assert meta.read(meta.resolve(None), VICTIM_PATH) == good
    assert good is not None


def test_a_json_page_after_a_byte_order_mark_is_read(meta: Storage, tmp_path: Path) -> None:
    # RFC 8259 lets a parser ignore a byte order mark, and the stdlib's json did.
    folder = tmp_path / "index"
    folder.mkdir()
    _wheel(folder)
    with serve_index(folder, IndexBehaviour(faults={VICTIM_PAGE: ["bom"]})) as index:
        summary = sync(meta, index.simple_url, ["victim"], OPTIONS)
        assert index.page_requests() == [VICTIM_PAGE]
    assert summary.exit_code == 0
    (release,) = Catalog(meta).get_project(meta.resolve(None), "victim").releases
    assert [f.filename for f in release.files] == ["victim-1.0-py3-none-any.whl"]


def test_duplicate_file_names_on_a_page_are_kept_once(meta: Storage, tmp_path: Path) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    _wheel(folder)

    def duplicate(document: dict[str, Any]) -> None:
        document["files"].append({**document["files"][0], "size": 1})

    with serve_index(folder, IndexBehaviour(pages={"victim": duplicate})) as index:
        summary = sync(meta, index.simple_url, ["victim"], OPTIONS)
    assert summary.exit_code == 0
    (release,) = Catalog(meta).get_project(meta.resolve(None), "victim").releases
    (dist_file,) = release.files
    assert dist_file.size == (folder / dist_file.filename).stat().st_size  # the first listing


def test_an_http_index_cannot_make_sync_read_local_files(meta: Storage, tmp_path: Path) -> None:
    folder, private = tmp_path / "index", tmp_path / "private"
    folder.mkdir()
    private.mkdir()
    _wheel(folder)
    secret = build_wheel(private, "victim", "1.0", requires_dist=["secret-requirement"])

    def point_at_local_file(document: dict[str, Any]) -> None:
        document["files"][0]["url"] = secret.as_uri()
        document["files"][0]["core-metadata"] = False

    with serve_index(folder, IndexBehaviour(pages={"victim": point_at_local_file})) as index:
        summary = sync(meta, index.simple_url, ["victim"], OPTIONS)
    assert summary.exit_code == 1
    (release,) = Catalog(meta).get_project(meta.resolve(None), "victim").releases
    (dist_file,) = release.files
    assert dist_file.metadata is None
    assert dist_file.metadata_status is MetadataStatus.UNUSABLE
    assert "a file:// URL from a source that is not local" in (dist_file.metadata_reason or "")


def test_the_cli_names_the_project_that_was_not_synced(
    meta: Storage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    build_wheel(folder, "alpha", "1.0")
    _wheel(folder)
    behaviour = IndexBehaviour(pages={"victim": _set_file_value("size", "123")})
    with serve_index(folder, behaviour) as index:
        code = main(["sync", "--repo", str(meta.path), "--source", index.simple_url, "--all"])
    assert code == 1
    captured = capsys.readouterr()
    assert "not synced (kept as it was): victim: " in captured.err
    assert "Traceback" not in captured.err
    assert "1 projects not synced" in captured.out
