"""`metasrv sync` against a real local index that the tests build and break."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from metasrv.cli.main import main
from metasrv.index.client import FetchOptions
from metasrv.index.sync import SyncOptions, sync
from metasrv.index.wholeindex import sync_all
from metasrv.model import MetadataStatus, Project
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS
from tests.distributions import build_sdist, build_wheel, metadata_text
from tests.indexserver import IndexBehaviour, serve_index

FAST = SyncOptions(fetch=FetchOptions(backoff_seconds=0.01, timeout_seconds=5))
PADDING = 400_000


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    """Return a folder of real archives: three projects, wheels padded so ranges matter."""
    folder = tmp_path / "archives"
    folder.mkdir()
    build_wheel(folder, "Gamma_Pkg", "1.0", requires_dist=["alpha>=1"], padding=PADDING)
    build_wheel(
        folder,
        "Gamma_Pkg",
        "2.0",
        requires_dist=["alpha>=2", 'beta ; extra == "b"'],
        requires_python=">=3.9",
        provides_extra=["b"],
        padding=PADDING,
    )
    build_sdist(folder, "Gamma_Pkg", "2.0", requires_dist=["alpha>=2"])
    build_wheel(folder, "alpha", "1.0", padding=PADDING)
    build_wheel(folder, "alpha", "2.0", padding=PADDING)
    build_sdist(folder, "beta", "0.5", requires_dist=["alpha"], metadata_version="2.1")
    build_sdist(folder, "beta", "0.6", metadata_version="2.2", dynamic=["Requires-Dist"])
    return folder


@pytest.fixture
def meta(tmp_path: Path) -> Storage:
    """Return an empty meta repository."""
    assert main(["init", str(tmp_path / "meta")]) == 0
    return Storage(tmp_path / "meta")


def _head_project(storage: Storage, name: str) -> Project:
    return Catalog(storage).get_project(storage.resolve(None), name)


def _archive_metadata(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("METADATA")))


@pytest.mark.parametrize(
    "behaviour",
    [
        IndexBehaviour(),
        IndexBehaviour(pep658=False),
        IndexBehaviour(pep658=False, ranges=False),
        IndexBehaviour(json=False),
        IndexBehaviour(json=False, pep658=False),
    ],
    ids=["json+pep658", "json+ranges", "json+full-downloads", "html+pep658", "html+ranges"],
)
def test_synced_data_equals_what_is_inside_the_archives(
    meta: Storage, archives: Path, behaviour: IndexBehaviour
) -> None:
    with serve_index(archives, behaviour) as index:
        summary = sync_all(meta, index.simple_url, FAST)
    assert summary.exit_code == 0
    assert summary.projects == 3
    gamma = _head_project(meta, "gamma-pkg")
    assert gamma.name == "gamma-pkg"  # the index's listing spells it so
    two = gamma.releases[1]
    assert two.version_text == "2.0"
    assert two.metadata is not None
    assert two.metadata.requires_dist == ("alpha>=2", 'beta ; extra == "b"')
    assert two.metadata.requires_python == ">=3.9"
    assert two.metadata.provides_extra == ("b",)
    wheel = next(f for f in two.files if f.filename.endswith(".whl"))
    sdist = next(f for f in two.files if f.filename.endswith(".tar.gz"))
    assert (
        wheel.hashes["sha256"]
        == hashlib.sha256((archives / wheel.filename).read_bytes()).hexdigest()
    )
    # PEP 700 sizes: from JSON pages, from reading the file, or from a HEAD for an unread sdist.
    assert wheel.size == (archives / wheel.filename).stat().st_size
    assert sdist.size == (archives / sdist.filename).stat().st_size
    assert wheel.url == f"{index.url}/files/{wheel.filename}"
    # The release's wheel gives its metadata, so its sdist is not downloaded.
    assert sdist.metadata is None
    assert sdist.metadata_status is MetadataStatus.SKIPPED
    assert sdist.metadata_reason == "the release's wheels give its metadata"


def test_range_requests_fetch_a_small_part_of_each_wheel(meta: Storage, archives: Path) -> None:
    with serve_index(archives, IndexBehaviour(pep658=False)) as index:
        sync(meta, index.simple_url, ["alpha"], FAST)
    wheel_bytes = sum(p.stat().st_size for p in archives.glob("alpha-*.whl"))
    fetched = [(path, rng) for path, rng in index.requests if path.endswith(".whl")]
    assert {path for path, _ in fetched} == {
        f"/files/{p.name}" for p in archives.glob("alpha-*.whl")
    }
    assert all(rng is not None for _, rng in fetched)
    assert index.bytes_sent < 0.05 * wheel_bytes


def test_sdists_are_trusted_only_as_pep_643_allows(meta: Storage, archives: Path) -> None:
    with serve_index(archives) as index:
        sync(meta, index.simple_url, ["beta"], FAST)
    old, new = _head_project(meta, "beta").releases
    assert old.metadata is None
    assert old.files[0].metadata_status is MetadataStatus.DYNAMIC
    assert old.files[0].metadata_reason == "sdist metadata 2.1 does not declare static fields"
    assert new.metadata is not None
    assert new.metadata.dynamic == ("Requires-Dist",)


def test_the_registered_name_comes_from_the_newest_metadata_when_not_listed(
    meta: Storage, archives: Path
) -> None:
    with serve_index(archives) as index:
        sync(meta, index.simple_url, ["GAMMA-PKG"], FAST)
    assert _head_project(meta, "gamma-pkg").name == "Gamma_Pkg"


@pytest.mark.parametrize(
    "faults", [["500", "500"], ["429"], ["truncate"], ["500", "truncate", "429"]]
)
def test_transient_faults_are_retried(meta: Storage, archives: Path, faults: list[str]) -> None:
    behaviour = IndexBehaviour(faults={"/simple/alpha/": list(faults)})
    with serve_index(archives, behaviour) as index:
        summary = sync(meta, index.simple_url, ["alpha"], FAST)
    assert summary.exit_code == 0
    assert [v.version_text for v in _head_project(meta, "alpha").releases] == ["1.0", "2.0"]
    assert sum(1 for path, _ in index.requests if path == "/simple/alpha/") == len(faults) + 1


def test_a_hung_request_times_out_and_is_retried(meta: Storage, archives: Path) -> None:
    # Long enough that a loaded runner answers every other request in time; the hang costs this.
    options = SyncOptions(fetch=FetchOptions(backoff_seconds=0.01, timeout_seconds=2))
    with serve_index(archives, IndexBehaviour(faults={"/simple/alpha/": ["hang"]})) as index:
        summary = sync(meta, index.simple_url, ["alpha"], options)
    assert summary.exit_code == 0
    assert sum(1 for path, _ in index.requests if path == "/simple/alpha/") == 2
    assert [v.version_text for v in _head_project(meta, "alpha").releases] == ["1.0", "2.0"]


def test_a_file_that_keeps_failing_is_recorded_as_an_error(meta: Storage, archives: Path) -> None:
    wheel = "alpha-2.0-py3-none-any.whl"
    behaviour = IndexBehaviour(pep658=False, faults={f"/files/{wheel}": ["500"] * 10})
    with serve_index(archives, behaviour) as index:
        summary = sync(meta, index.simple_url, ["alpha"], FAST)
    assert summary.exit_code == 1
    failed = _head_project(meta, "alpha").releases[1].files[0]
    assert failed.metadata is None
    assert failed.metadata_status is MetadataStatus.FETCH_FAILED
    assert "HTTP 500 after 5 attempts" in (failed.metadata_reason or "")
    with serve_index(archives, IndexBehaviour(pep658=False)) as index:
        assert sync(meta, index.simple_url, ["alpha"], FAST).exit_code == 0
    assert _head_project(meta, "alpha").releases[1].files[0].metadata is not None


def _bomb(folder: Path) -> None:
    """Write a wheel whose METADATA inflates to 50 MB from a few kB."""
    path = folder / "bomb-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "bomb-1.0.dist-info/METADATA", b"Metadata-Version: 2.1\n" + b" " * 50_000_000
        )


def _huge_metadata(folder: Path) -> None:
    text = metadata_text("huge", "1.0") + "x" * 5_000_000
    build_wheel(folder, "huge", "1.0", metadata=text)


def _corrupt(folder: Path) -> None:
    (folder / "corrupt-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04" + os.urandom(2000))


@pytest.mark.parametrize(
    ("make", "name", "pep658", "message"),
    [
        (_bomb, "bomb", False, "METADATA is larger than 1048576 bytes"),
        (_huge_metadata, "huge", False, "METADATA is larger than 1048576 bytes"),
        (_huge_metadata, "huge", True, "larger than 1048576 bytes"),
        (_corrupt, "corrupt", False, "corrupt wheel"),
    ],
    ids=["zip-bomb", "5MB-METADATA-in-wheel", "5MB-METADATA-file", "corrupt"],
)
def test_hostile_archives_are_recorded_as_errors_not_crashes(
    meta: Storage, tmp_path: Path, make: object, name: str, pep658: bool, message: str
) -> None:
    folder = tmp_path / "hostile"
    folder.mkdir()
    make(folder)  # type: ignore[operator]
    with serve_index(folder, IndexBehaviour(pep658=pep658)) as index:
        summary = sync(meta, index.simple_url, [name], FAST)
    assert summary.exit_code == 1
    dist_file = _head_project(meta, name).releases[0].files[0]
    assert dist_file.metadata is None
    assert dist_file.metadata_status is MetadataStatus.UNUSABLE
    assert message in (dist_file.metadata_reason or "")


@pytest.mark.parametrize("where", ["wheel", "metadata-file"])
def test_a_hash_mismatch_is_recorded_and_no_metadata_is_trusted(
    meta: Storage, archives: Path, where: str
) -> None:
    wheel = "alpha-2.0-py3-none-any.whl"
    if where == "wheel":
        tampered = bytearray((archives / wheel).read_bytes())
        tampered[100] ^= 0xFF
        behaviour = IndexBehaviour(pep658=False, ranges=False, tampered={wheel: bytes(tampered)})
    else:
        behaviour = IndexBehaviour(metadata_hash={wheel: "0" * 64})
    with serve_index(archives, behaviour) as index:
        summary = sync(meta, index.simple_url, ["alpha"], FAST)
    assert summary.exit_code == 1
    dist_file = _head_project(meta, "alpha").releases[1].files[0]
    assert dist_file.metadata is None
    assert dist_file.metadata_status is MetadataStatus.UNUSABLE
    assert (dist_file.metadata_reason or "").startswith("hash mismatch")


def test_a_resync_with_nothing_new_makes_no_commit_and_fetches_no_archive(
    meta: Storage, archives: Path
) -> None:
    with serve_index(archives) as index:
        first = sync_all(meta, index.simple_url, FAST)
        head = meta.resolve(None)
        index.requests.clear()
        second = sync_all(meta, index.simple_url, FAST)
    assert len(first.commits) == 1
    assert second.commits == []
    assert meta.resolve(None) == head
    assert not [path for path, _ in index.requests if path.startswith("/files/")]


def test_a_new_release_fetches_only_its_own_files(meta: Storage, archives: Path) -> None:
    with serve_index(archives) as index:
        sync(meta, index.simple_url, ["alpha"], FAST)
        build_wheel(archives, "alpha", "3.0", requires_dist=["gamma-pkg"])
        index.requests.clear()
        summary = sync(meta, index.simple_url, ["alpha"], FAST)
    assert summary.releases_added == 1
    assert summary.files_added == 1
    assert [path for path, _ in index.requests if path.startswith("/files/")] == [
        "/files/alpha-3.0-py3-none-any.whl.metadata"
    ]
    assert len(summary.commits) == 1


def test_a_folder_of_archives_is_a_source(meta: Storage, archives: Path) -> None:
    summary = sync_all(meta, str(archives), FAST)
    assert summary.exit_code == 0
    gamma = _head_project(meta, "gamma-pkg")
    assert gamma.name == "Gamma_Pkg"
    wheel = gamma.releases[1].files[1]
    assert wheel.url == (archives / wheel.filename).resolve().as_uri()
    assert gamma.releases[1].metadata is not None
    assert gamma.releases[1].metadata.requires_python == ">=3.9"
    assert sync_all(meta, archives.as_uri(), FAST).commits == []


def test_a_file_url_index_is_a_source(meta: Storage, archives: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "alpha").mkdir(parents=True)
    (tree / "index.html").write_text('<a href="alpha/">alpha</a>')
    anchors = "".join(
        f'<a href="../../archives/{p.name}#sha256={hashlib.sha256(p.read_bytes()).hexdigest()}">'
        f"{p.name}</a>"
        for p in sorted(archives.glob("alpha-*"))
    )
    (tree / "alpha" / "index.html").write_text(anchors)
    summary = sync_all(meta, tree.as_uri(), FAST)
    assert summary.exit_code == 0
    releases = _head_project(meta, "alpha").releases
    assert [r.version_text for r in releases] == ["1.0", "2.0"]
    assert all(r.metadata is not None for r in releases)


def test_a_killed_sync_leaves_the_last_checkpoint_and_the_next_run_completes(
    meta: Storage, archives: Path
) -> None:
    before = meta.resolve(None)
    behaviour = IndexBehaviour(faults={"/simple/gamma-pkg/": ["hang"]})
    with serve_index(archives, behaviour) as index:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metasrv",
                "sync",
                "--repo",
                str(meta.path),
                "--source",
                index.simple_url,
                "--checkpoint",
                "1",
                "alpha",
                "beta",
                "gamma-pkg",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while len(_commits_since(meta, before)) < 2:
                assert process.poll() is None
                assert time.monotonic() < deadline, "no two checkpoint commits within 30 s"
                time.sleep(0.01)  # polling git for the checkpoint commits, with a deadline
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=SUBPROCESS_DEADLINE_SECONDS)
        checkpoint = meta.resolve(None)
        assert set(Catalog(meta).list_projects(checkpoint)) == {"alpha", "beta"}
        index.behaviour.faults.clear()
        summary = sync(meta, index.simple_url, ["alpha", "beta", "gamma-pkg"], FAST)
    assert summary.changed == 1
    assert set(Catalog(meta).list_projects(meta.resolve(None))) == {"alpha", "beta", "gamma-pkg"}


def _commits_since(storage: Storage, base: str) -> list[str]:
    output = subprocess.run(
        ["git", "rev-list", f"{base}..main"],
        cwd=storage.path,
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_DEADLINE_SECONDS,
    ).stdout
    return output.split()


def test_the_cli_exits_2_on_a_source_that_is_not_one(
    meta: Storage, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sync", "--repo", str(meta.path), "--source", "ftp://x/", "a"]) == 2
    assert "neither an http(s) index nor a folder" in capsys.readouterr().err


def test_the_cli_exits_2_on_an_unknown_named_project(
    meta: Storage, archives: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_index(archives) as index:
        assert main(["sync", "--repo", str(meta.path), "--source", index.simple_url, "nope"]) == 2
    assert "the source has no project 'nope'" in capsys.readouterr().err


def test_the_cli_syncs_from_the_configured_source_and_summarises(
    tmp_path: Path, archives: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_index(archives) as index:
        assert main(["init", str(tmp_path / "m"), "--source", index.simple_url]) == 0
        assert main(["sync", "--all", "--repo", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "synced 3 projects" in out
    assert "3 changed" in out
    assert "0 errors, 0 projects not synced, 1 commits" in out


def test_two_spellings_of_one_version_become_one_release(meta: Storage, tmp_path: Path) -> None:
    folder = tmp_path / "spellings"
    folder.mkdir()
    build_wheel(folder, "old", "0.12.01")
    build_wheel(folder, "old", "0.12.1", requires_dist=["alpha"])
    with serve_index(folder) as index:
        summary = sync(meta, index.simple_url, ["old"], FAST)
    assert summary.exit_code == 0
    (release,) = _head_project(meta, "old").releases
    assert sorted(f.filename for f in release.files) == [
        "old-0.12.01-py3-none-any.whl",
        "old-0.12.1-py3-none-any.whl",
    ]
