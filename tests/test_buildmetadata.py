"""metasrv build-metadata end to end: sync, build, record, serve; what pip and uv then do."""

from __future__ import annotations

import fcntl
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from metasrv.cli.main import main
from metasrv.http.app import create_app
from metasrv.index.buildenvs import built_on
from metasrv.index.buildrun import LOCK_NAME
from metasrv.index.pages import MIME_SIMPLE_JSON
from metasrv.model import DistFile, MetadataStatus
from metasrv.names import core_metadata_path
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from tests.buildbackend import build_backend_wheel, build_dynamic_sdist
from tests.conftest import AsgiClient, running_server
from tests.deadlines import wait_for_exit
from tests.distributions import build_wheel, metadata_text
from tests.indexserver import LocalIndex, serve_index
from tests.test_installers import run, uv

DEADLINE_SECONDS = 120
BUILDS = {"wall-seconds": 60, "cpu-seconds": 30, "memory-mb": 1024, "processes": 16, "output-mb": 1}


@dataclass
class Mirror:
    """A local index with dynamic sdists, and a meta repository synced from it."""

    index: LocalIndex
    repo: Path
    storage: Storage
    environments: Path


def _configure(repo: Path, index: LocalIndex, environments: Path, **builds: object) -> None:
    config = {
        "format": 1,
        "source": {"url": index.simple_url},
        "builds": {
            "index-url": index.simple_url,
            "environments": str(environments),
            **BUILDS,
            **builds,
        },
    }
    storage = Storage(repo)
    storage.commit(
        storage.head_branch(), {"metasrv.toml": tomlcodec.dumps(config)}, "configure builds"
    )


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    folder = tmp_path / "index"
    folder.mkdir()
    build_backend_wheel(folder)
    build_wheel(folder, "dep", "1.0")
    build_dynamic_sdist(folder, "oldlib", "1.0", requires_dist=("dep",))
    build_dynamic_sdist(folder, "py2lib", "1.0", code='print "hello"')
    repo = tmp_path / "meta"
    with serve_index(folder) as index:
        assert main(["init", str(repo), "--source", index.simple_url]) == 0
        _configure(repo, index, tmp_path / "environments")
        assert main(["sync", "--repo", str(repo), "oldlib", "py2lib", "dep", "tinybackend"]) == 0
        yield Mirror(index, repo, Storage(repo), tmp_path / "environments")


def _file(storage: Storage, project: str) -> DistFile:
    found = Catalog(storage).get_project(storage.resolve(None), project)
    return next(f for r in found.releases for f in r.files if not f.filename.endswith(".whl"))


def _sdist_downloads(index: LocalIndex, filename: str) -> int:
    return sum(1 for path, _range in index.requests if path.endswith(filename))


def test_build_metadata_records_what_each_build_gave_and_where(mirror: Mirror) -> None:
    assert _file(mirror.storage, "oldlib").metadata_status is MetadataStatus.DYNAMIC
    assert main(["build-metadata", "--repo", str(mirror.repo)]) == 1
    built = _file(mirror.storage, "oldlib")
    assert built.metadata_status is MetadataStatus.BUILT
    assert built.metadata is not None
    assert built.metadata.requires_dist == ("dep",)
    assert built.metadata_built_on == built_on()
    failed = _file(mirror.storage, "py2lib")
    assert failed.metadata_status is MetadataStatus.BUILD_FAILED
    assert failed.metadata_reason == "python 2 only"
    assert failed.metadata is None
    head = mirror.storage.resolve(None)
    assert main(["build-metadata", "--repo", str(mirror.repo)]) == 0
    assert mirror.storage.resolve(None) == head
    assert main(["build-metadata", "--repo", str(mirror.repo), "--retry-failed", "py2lib"]) == 1
    assert _file(mirror.storage, "py2lib").metadata_reason == "python 2 only"


def test_the_apis_serve_built_metadata_with_its_origin_and_advertise_it(mirror: Mirror) -> None:
    assert main(["build-metadata", "--repo", str(mirror.repo)]) == 1
    client = AsgiClient(create_app(mirror.repo))
    release = client.get("/v1/projects/oldlib/1.0").json()
    assert release["requires-dist"] == ["dep"]
    assert release["files"][0]["metadata-status"] == "built"
    assert release["files"][0]["metadata-built-on"] == built_on()
    page = client.get("/simple/oldlib/", headers={"accept": MIME_SIMPLE_JSON}).json()
    assert "core-metadata" in page["files"][0]
    metadata = client.get(page["files"][0]["url"] + ".metadata")
    assert "Requires-Dist: dep" in metadata.text
    failed = client.get("/simple/py2lib/", headers={"accept": MIME_SIMPLE_JSON}).json()
    assert "core-metadata" not in failed["files"][0]
    assert client.get("/v1/projects/py2lib/1.0").json()["files"][0]["metadata-reason"] == (
        "python 2 only"
    )


def test_a_built_sdist_s_metadata_file_is_the_document_its_build_wrote_byte_for_byte(
    mirror: Mirror,
) -> None:
    # The build writes a description body and a field metasrv does not model: a .metadata
    # rendered from the recorded fields would lack both.
    body = "Summary: only the build says this\n\nA description the build wrote.\n"
    code = "METADATA = METADATA.rstrip() + " + repr("\n" + body)
    build_dynamic_sdist(mirror.index.folder, "desclib", "1.0", requires_dist=("dep",), code=code)
    expected = metadata_text("desclib", "1.0", requires_dist=("dep",)).rstrip() + "\n" + body
    digest = hashlib.sha256(expected.encode()).hexdigest()
    assert main(["sync", "--repo", str(mirror.repo), "desclib"]) == 0
    assert main(["build-metadata", "--repo", str(mirror.repo), "desclib"]) == 0
    built = _file(mirror.storage, "desclib")
    assert built.metadata_status is MetadataStatus.BUILT
    assert (built.core_metadata_sha256, built.core_metadata_stored) == (digest, True)
    head = mirror.storage.resolve(None)
    # Stored content-addressed in the same commit as the file that names it.
    assert mirror.storage.read(head, core_metadata_path(digest)) == expected.encode()
    client = AsgiClient(create_app(mirror.repo))
    page = client.get("/simple/desclib/", headers={"accept": MIME_SIMPLE_JSON}).json()
    (listed,) = page["files"]
    assert listed["core-metadata"] == {"sha256": digest}
    served = client.get(listed["url"] + ".metadata")
    assert served.status_code == 200
    assert served.content == expected.encode()
    assert hashlib.sha256(served.content).hexdigest() == digest


def test_pip_resolves_a_built_sdist_without_downloading_it_but_uv_builds_it_still(
    mirror: Mirror, tmp_path: Path
) -> None:
    sdist = "oldlib-1.0.tar.gz"
    with running_server(["--repo", str(mirror.repo)]) as server:
        simple = f"{server.url}/simple/"
        report = ["install", "--dry-run", "--ignore-installed", "--report", "-", "--quiet"]
        # Before the build a resolver must fetch the sdist to learn its requirements.
        run(sys.executable, "-m", "pip", *report, "--index-url", simple, "oldlib")
        assert _sdist_downloads(mirror.index, sdist) > 0
        assert main(["build-metadata", "--repo", str(mirror.repo)]) == 1
        mirror.index.requests.clear()
        resolved = run(sys.executable, "-m", "pip", *report, "--index-url", simple, "oldlib")
        assert resolved.returncode == 0, resolved.stderr
        names = {item["metadata"]["name"] for item in json.loads(resolved.stdout)["install"]}
        assert names == {"oldlib", "dep"}
        assert _sdist_downloads(mirror.index, sdist) == 0
        (tmp_path / "requirements.in").write_text("oldlib\n")
        compiled = uv(
            "pip",
            "compile",
            str(tmp_path / "requirements.in"),
            "--index-url",
            simple,
            "--no-header",
            cache=tmp_path / "c",
        )
        assert compiled.returncode == 0, compiled.stderr
        assert "dep==1.0" in compiled.stdout
        # uv reads PEP 658 metadata for wheels only: it downloads the sdist and builds it.
        assert _sdist_downloads(mirror.index, sdist) > 0


def test_sync_builds_in_the_background_when_metasrv_toml_says_so(
    mirror: Mirror, capsys: pytest.CaptureFixture[str]
) -> None:
    _configure(mirror.repo, mirror.index, mirror.environments, enabled=True)
    build_dynamic_sdist(mirror.index.folder, "newlib", "2.0", requires_dist=("dep>=1",))
    capsys.readouterr()
    assert main(["sync", "--repo", str(mirror.repo), "newlib"]) == 0
    printed = capsys.readouterr().out
    pid = int(printed.split("in the background (pid ")[1].split(")")[0])
    wait_for_exit(pid, "build-metadata finishing in the background", DEADLINE_SECONDS)
    built = _file(mirror.storage, "newlib")
    assert built.metadata_status is MetadataStatus.BUILT
    assert built.metadata is not None
    assert built.metadata.requires_dist == ("dep>=1",)


@pytest.mark.parametrize(
    ("builds", "message"),
    [
        ({"memory-mb": 0}, "memory-mb must be at least 1"),
        ({"processes": "many"}, "processes"),
        ({"sandbox": "none"}, "sandbox"),
    ],
)
def test_a_bad_builds_table_is_one_line_and_exit_2(
    mirror: Mirror, capsys: pytest.CaptureFixture[str], builds: dict[str, object], message: str
) -> None:
    _configure(mirror.repo, mirror.index, mirror.environments, **builds)
    head = mirror.storage.resolve(None)
    capsys.readouterr()
    assert main(["build-metadata", "--repo", str(mirror.repo)]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert len(error.strip().splitlines()) == 1
    assert mirror.storage.resolve(None) == head


def test_without_bubblewrap_nothing_is_built_and_the_error_says_how_to_get_it(
    mirror: Mirror, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    head = mirror.storage.resolve(None)
    assert main(["build-metadata", "--repo", str(mirror.repo)]) == 2
    assert "apt-get install bubblewrap" in capsys.readouterr().err
    assert mirror.storage.resolve(None) == head
    assert _file(mirror.storage, "oldlib").metadata_status is MetadataStatus.DYNAMIC


def _wait_until_no_run_holds_the_lock(storage: Storage) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    with (storage.path / LOCK_NAME).open("w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                assert time.monotonic() < deadline, "build-metadata did not finish"
                time.sleep(0.1)
            else:
                return


def test_pull_through_has_a_dynamic_sdist_built_in_a_process_of_its_own(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    folder.mkdir()
    build_backend_wheel(folder)
    build_wheel(folder, "dep", "1.0")
    build_dynamic_sdist(folder, "pulledlib", "1.0", requires_dist=("dep<2",))
    repo = tmp_path / "meta"
    with serve_index(folder) as index:
        assert main(["init", str(repo), "--source", index.simple_url]) == 0
        _configure(repo, index, tmp_path / "environments", enabled=True)
        storage = Storage(repo)
        with (
            running_server(["--repo", str(repo)]) as server,
            httpx.Client(base_url=server.url) as http,
        ):
            first = http.get("/v1/projects/pulledlib/1.0").json()
            assert first["files"][0]["metadata-status"] in ("dynamic", "built")
            deadline = time.monotonic() + DEADLINE_SECONDS
            while _file(storage, "pulledlib").metadata_status is not MetadataStatus.BUILT:
                assert time.monotonic() < deadline, "pull-through's sdist was not built"
                time.sleep(0.1)
            _wait_until_no_run_holds_the_lock(storage)
            served = http.get("/v1/projects/pulledlib/1.0").json()
    assert served["requires-dist"] == ["dep<2"]
    assert served["files"][0]["metadata-status"] == "built"
