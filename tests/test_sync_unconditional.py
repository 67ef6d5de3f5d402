"""sync --unconditional and --probe-metadata: files get the hash of the PEP 658 file served."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from metasrv.cli.main import main
from metasrv.http.app import create_app
from metasrv.index.pages import MIME_SIMPLE_JSON
from metasrv.model import CoreMetadata, Project, Release
from metasrv.names import core_metadata_path, project_path
from metasrv.repo.catalog import DATA_ROOT, Catalog
from metasrv.repo.projectfile import write_project
from metasrv.repo.storage import Storage
from tests.conftest import AsgiClient
from tests.distributions import build_sdist, build_wheel
from tests.indexserver import IndexBehaviour, LocalIndex, serve_index


def _wheel_metadata(path: Path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("METADATA")))


def _project(storage: Storage) -> Project:
    return Catalog(storage).get_project(storage.resolve(None), "alpha")


def _forget_hashes(storage: Storage, metadata: CoreMetadata | None = None) -> None:
    """Rewrite the project as a metasrv that kept no metadata hashes synced it."""
    project = _project(storage)
    releases = [
        Release.from_files(
            release.version_text,
            tuple(
                replace(
                    f,
                    core_metadata_sha256=None,
                    core_metadata_stored=False,
                    metadata=f.metadata if metadata is None or f.metadata is None else metadata,
                )
                for f in release.files
            ),
        )
        for release in project.releases
    ]
    old = Project.create(project.name, releases, project.source_state)
    path = f"{DATA_ROOT}/{project_path(old.normalized_name)}"
    storage.commit(storage.head_branch(), {path: write_project(old)}, "as an older sync left it")


def _digest(wheel: Path) -> str:
    return hashlib.sha256(_wheel_metadata(wheel)).hexdigest()


def _file_requests(index: LocalIndex) -> list[str]:
    return [path for path, _ in index.requests if path.startswith("/files/")]


def test_a_page_read_again_whole_records_the_hashes_of_its_pep_658_files_without_reading_them(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    wheels = [build_wheel(folder, "alpha", version, requires_dist=["beta"]) for version in "12"]
    build_sdist(folder, "alpha", "2", requires_dist=["beta"])
    repo = tmp_path / "meta"
    assert main(["init", str(repo)]) == 0
    storage = Storage(repo)
    with serve_index(folder) as index:
        sync = ["sync", "--repo", str(repo), "--source", index.simple_url, "alpha"]
        assert main(sync) == 0
        _forget_hashes(storage)
        forgotten = storage.resolve(None)
        index.requests.clear()
        # A conditional request: the page did not change (304), so nothing is learnt.
        assert main(sync) == 0
        assert storage.resolve(None) == forgotten
        assert main([*sync, "--unconditional"]) == 0
        assert _file_requests(index) == []
    assert storage.resolve(None) != forgotten
    expected = {w.name: hashlib.sha256(_wheel_metadata(w)).hexdigest() for w in wheels}
    files = {f.filename: f for r in _project(storage).releases for f in r.files}
    for filename, digest in expected.items():
        assert files[filename].core_metadata_sha256 == digest
        assert files[filename].core_metadata_stored is False  # the source serves it
    # The sdist beside wheels was never read: no document, so no hash to claim.
    assert files["alpha-2.tar.gz"].core_metadata_sha256 is None
    client = AsgiClient(create_app(repo))
    page = client.get("/simple/alpha/", headers={"accept": MIME_SIMPLE_JSON}).json()
    listed = {f["filename"]: f.get("core-metadata") for f in page["files"]}
    assert listed == {**{n: {"sha256": d} for n, d in expected.items()}, "alpha-2.tar.gz": None}
    wheel_url = next(f["url"] for f in page["files"] if f["filename"] == wheels[0].name)
    # The source serves the wheel and its .metadata as they are: the page links them there.
    assert wheel_url == f"{index.url}/files/{wheels[0].name}"
    redirect = client.get(f"/files/alpha/{wheels[0].name}.metadata")
    assert redirect.status_code in (301, 302, 303, 307, 308)
    assert redirect.headers["location"] == f"{wheel_url}.metadata"


def _unlisted_pep658() -> IndexBehaviour:
    """An index that serves each wheel's .metadata but, like a stripped mirror, lists none."""

    def unlist(document: dict[str, Any]) -> None:
        for entry in document["files"]:
            entry.pop("core-metadata", None)

    return IndexBehaviour(pages={"alpha": unlist})


def _alpha_index(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "index"
    folder.mkdir()
    wheels = [build_wheel(folder, "alpha", version, requires_dist=["beta"]) for version in "12"]
    return folder, {w.name: hashlib.sha256(_wheel_metadata(w)).hexdigest() for w in wheels}


def _hashes(storage: Storage) -> dict[str, tuple[str | None, bool]]:
    return {
        f.filename: (f.core_metadata_sha256, f.core_metadata_stored)
        for r in _project(storage).releases
        for f in r.files
    }


def test_probing_reads_unlisted_metadata_files_and_stores_no_document(tmp_path: Path) -> None:
    folder, expected = _alpha_index(tmp_path)
    # A wheel whose .metadata the source lacks is read by ranges, and no copy is kept of it.
    lacking = build_wheel(folder, "alpha", "3", requires_dist=["beta"])
    behaviour = _unlisted_pep658()
    behaviour.faults[f"/files/{lacking.name}.metadata"] = ["404"]
    repo = tmp_path / "meta"
    assert main(["init", str(repo)]) == 0
    storage = Storage(repo)
    with serve_index(folder, behaviour) as index:
        sync = ["sync", "--repo", str(repo), "--source", index.simple_url, "alpha"]
        assert main([*sync, "--probe-metadata"]) == 0
        wheel_reads = {p for p in _file_requests(index) if p.endswith(".whl")}
    assert _hashes(storage) == {
        **{name: (digest, False) for name, digest in expected.items()},
        lacking.name: (None, False),
    }
    assert wheel_reads == {f"/files/{lacking.name}"}
    assert _project(storage).releases[-1].metadata is not None  # its metadata was still read
    assert storage.read(storage.resolve(None), core_metadata_path(_digest(lacking))) is None
    head = storage.resolve(None)
    for digest in expected.values():  # the source serves them: no copies
        assert storage.read(head, core_metadata_path(digest)) is None
    client = AsgiClient(create_app(repo))
    page = client.get("/simple/alpha/", headers={"accept": MIME_SIMPLE_JSON}).json()
    listed = {f["filename"]: f.get("core-metadata") for f in page["files"]}
    assert listed == {**{n: {"sha256": d} for n, d in expected.items()}, lacking.name: None}


@pytest.mark.parametrize("recorded_agrees", [True, False])
def test_probing_gives_files_synced_earlier_the_hash_of_the_document_they_were_read_from(
    tmp_path: Path, recorded_agrees: bool
) -> None:
    folder, expected = _alpha_index(tmp_path)
    repo = tmp_path / "meta"
    assert main(["init", str(repo)]) == 0
    storage = Storage(repo)
    with serve_index(folder, _unlisted_pep658()) as index:
        sync = ["sync", "--repo", str(repo), "--source", index.simple_url, "alpha"]
        assert main(sync) == 0
        other = CoreMetadata("2.1", requires_dist=("gamma",))
        _forget_hashes(storage, None if recorded_agrees else other)
        index.requests.clear()
        assert main([*sync, "--unconditional", "--probe-metadata"]) == 0
        reads = _file_requests(index)
    assert sorted(reads) == sorted(f"/files/{name}.metadata" for name in expected)
    if recorded_agrees:
        assert _hashes(storage) == {name: (digest, False) for name, digest in expected.items()}
    else:
        # A document that says otherwise than the record is not the one the record was read from.
        assert _hashes(storage) == dict.fromkeys(expected, (None, False))


def test_unconditional_takes_named_projects_not_the_whole_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "meta"), "--source", "https://index.test/simple/"]) == 0
    assert main(["sync", "--repo", str(tmp_path / "meta"), "--all", "--unconditional"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "--unconditional take named projects" in error


def _metadata_requests(index: LocalIndex) -> list[str]:
    return [path for path in _file_requests(index) if path.endswith(".metadata")]


@contextmanager
def _alpha_mirror(
    tmp_path: Path,
) -> Iterator[tuple[Storage, LocalIndex, list[str], dict[str, str]]]:
    """Serve alpha's wheels with unlisted PEP 658 files; yield the meta repository, the index,
    the sync command line and each wheel's document hash."""
    folder, expected = _alpha_index(tmp_path)
    repo = tmp_path / "meta"
    assert main(["init", str(repo)]) == 0
    with serve_index(folder, _unlisted_pep658()) as index:
        sync = ["sync", "--repo", str(repo), "--source", index.simple_url, "alpha"]
        yield Storage(repo), index, sync, expected


def test_without_probing_no_unlisted_metadata_file_is_asked_for(tmp_path: Path) -> None:
    with _alpha_mirror(tmp_path) as (storage, index, sync, expected):
        assert main(sync) == 0
        _forget_hashes(storage)
        index.requests.clear()
        assert main([*sync, "--unconditional"]) == 0
        assert _metadata_requests(index) == []
    assert _hashes(storage) == dict.fromkeys(expected, (None, False))


def test_probing_again_asks_nothing_of_files_that_have_their_hash(tmp_path: Path) -> None:
    with _alpha_mirror(tmp_path) as (storage, index, sync, expected):
        assert main([*sync, "--probe-metadata"]) == 0
        index.requests.clear()
        assert main([*sync, "--unconditional", "--probe-metadata"]) == 0
        assert _metadata_requests(index) == []
    assert _hashes(storage) == {name: (digest, False) for name, digest in expected.items()}


def test_probing_a_file_whose_metadata_file_is_gone_leaves_it_without_a_hash(
    tmp_path: Path,
) -> None:
    with _alpha_mirror(tmp_path) as (storage, index, sync, expected):
        gone, kept = sorted(expected)
        assert main(sync) == 0
        _forget_hashes(storage)
        index.behaviour.faults[f"/files/{gone}.metadata"] = ["404"]
        assert main([*sync, "--unconditional", "--probe-metadata"]) == 0
    assert _hashes(storage) == {gone: (None, False), kept: (expected[kept], False)}
