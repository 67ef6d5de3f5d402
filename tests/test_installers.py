"""Real pip and uv use metasrv as their index, with and without an understanding."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from packaging.metadata import parse_email
from packaging.utils import canonicalize_name
from pypi_simple import ACCEPT_HTML_ONLY, ACCEPT_JSON_ONLY, PyPISimple

from metasrv.cli.main import main
from metasrv.repo.storage import Storage
from tests.conftest import RunningServer, running_server
from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS
from tests.distributions import build_wheel
from tests.indexserver import IndexBehaviour, LocalIndex, serve_index
from tests.test_understandings import add_rules, register

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
RELAX = {
    "id": "beta-works-with-alpha-2",
    "versions": "==1.0",
    "relax": ["mtsv-alpha"],
    "reason": "beta 1.0 runs fine on alpha 2",
}


@dataclass
class World:
    index: LocalIndex
    server: RunningServer
    meta: Storage
    root: Path

    @property
    def plain(self) -> str:
        return f"{self.server.url}/simple/"

    @property
    def patched(self) -> str:
        return f"{self.server.url}/u/relaxed/simple/"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Serve real wheels from a local index, sync them into metasrv, and run metasrv."""
    root = tmp_path_factory.mktemp("installers")
    archives = root / "archives"
    archives.mkdir()
    build_wheel(archives, "mtsv-alpha", "1.0")
    build_wheel(archives, "mtsv-alpha", "2.0")
    build_wheel(
        archives, "mtsv-beta", "1.0", requires_dist=["mtsv-alpha<2"], requires_python=">=3.8"
    )
    build_wheel(archives, "mtsv-gamma", "1.0", requires_dist=["mtsv-alpha>=2"])
    build_wheel(
        archives,
        "mtsv-delta",
        "1.0",
        requires_dist=['mtsv-gamma ; extra == "g"'],
        provides_extra=["g"],
    )
    with serve_index(archives, IndexBehaviour(pep658=False)) as index:
        assert main(["init", str(root / "meta"), "--source", index.simple_url]) == 0
        assert main(["sync", "--all", "--repo", str(root / "meta")]) == 0
        meta = Storage(root / "meta")
        register(meta, "relaxed", ".", "understandings/relaxed")
        add_rules(meta, "understandings/relaxed", "mtsv-beta", RELAX)
        with running_server(["--repo", str(meta.path)]) as server:
            yield World(index, server, meta, root)


def _environment() -> dict[str, str]:
    # Keep this machine's pip and uv configuration (extra indexes, find-links, caps) out of it.
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    environment.update(
        PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", UV_NO_CONFIG="1"
    )
    return environment


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        env=_environment(),
        cwd=cwd,
        check=False,
        timeout=SUBPROCESS_DEADLINE_SECONDS,
    )


def new_venv(path: Path) -> Path:
    result = run(sys.executable, "-m", "venv", "--without-pip", str(path))
    assert result.returncode == 0, result.stderr
    return path / "bin" / "python"


def pip(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "pip", "--python", str(python), *args)


def uv(*args: str, cwd: Path | None = None, cache: Path) -> subprocess.CompletedProcess[str]:
    assert UV is not None
    return run(UV, *args, "--cache-dir", str(cache), cwd=cwd)


def installed(python: Path) -> dict[str, str]:
    listing = pip(python, "list", "--format=freeze")
    assert listing.returncode == 0, listing.stderr
    return dict(line.split("==") for line in listing.stdout.split())


def test_pip_installs_the_same_through_metasrv_as_from_the_source(
    world: World, tmp_path: Path
) -> None:
    direct, through = new_venv(tmp_path / "direct"), new_venv(tmp_path / "through")
    assert (
        pip(direct, "install", "--index-url", world.index.simple_url, "mtsv-delta[g]").returncode
        == 0
    )
    result = pip(through, "install", "--index-url", world.plain, "mtsv-delta[g]")
    assert result.returncode == 0, result.stderr
    assert (
        installed(through)
        == installed(direct)
        == {
            "mtsv-alpha": "2.0",
            "mtsv-delta": "1.0",
            "mtsv-gamma": "1.0",
        }
    )


def test_uv_installs_the_same_through_metasrv_as_from_the_source(
    world: World, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    for name, index_url in (("direct", world.index.simple_url), ("through", world.plain)):
        assert uv("venv", str(tmp_path / name), cache=cache).returncode == 0
        result = uv(
            "pip",
            "install",
            "--python",
            str(tmp_path / name),
            "--index-url",
            index_url,
            "mtsv-beta",
            cache=cache,
        )
        assert result.returncode == 0, result.stderr
    assert installed(tmp_path / "direct/bin/python") == installed(tmp_path / "through/bin/python")


def test_published_metadata_forbids_the_combination_for_both_installers(
    world: World, tmp_path: Path
) -> None:
    python = new_venv(tmp_path / "env")
    refused = pip(python, "install", "--index-url", world.plain, "mtsv-beta", "mtsv-gamma")
    assert refused.returncode != 0
    assert "ResolutionImpossible" in refused.stderr or "conflict" in refused.stderr.lower()
    assert uv("venv", str(tmp_path / "uvenv"), cache=tmp_path / "c").returncode == 0
    uv_refused = uv(
        "pip",
        "install",
        "--python",
        str(tmp_path / "uvenv"),
        "--index-url",
        world.plain,
        "mtsv-beta",
        "mtsv-gamma",
        cache=tmp_path / "c",
    )
    assert uv_refused.returncode != 0
    assert "unsatisfiable" in uv_refused.stderr


def test_pip_installs_with_the_understanding_and_pip_check_agrees(
    world: World, tmp_path: Path
) -> None:
    python = new_venv(tmp_path / "env")
    result = pip(python, "install", "--index-url", world.patched, "mtsv-beta", "mtsv-gamma")
    assert result.returncode == 0, result.stderr
    assert installed(python) == {"mtsv-alpha": "2.0", "mtsv-beta": "1.0", "mtsv-gamma": "1.0"}
    check = pip(python, "check")
    assert check.returncode == 0, check.stdout
    assert "No broken requirements found." in check.stdout
    metadata = next(
        (tmp_path / "env").glob("lib/python*/site-packages/mtsv_beta-1.0.dist-info/METADATA")
    )
    assert "Requires-Dist: mtsv-alpha\n" in metadata.read_text()


def test_uv_installs_compiles_and_locks_with_the_understanding(
    world: World, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    assert uv("venv", str(tmp_path / "env"), cache=cache).returncode == 0
    result = uv(
        "pip",
        "install",
        "--python",
        str(tmp_path / "env"),
        "--index-url",
        world.patched,
        "mtsv-beta",
        "mtsv-gamma",
        cache=cache,
    )
    assert result.returncode == 0, result.stderr
    check = uv("pip", "check", "--python", str(tmp_path / "env"), cache=cache)
    assert check.returncode == 0, check.stdout + check.stderr
    assert pip(tmp_path / "env/bin/python", "check").returncode == 0

    (tmp_path / "requirements.in").write_text("mtsv-beta\nmtsv-gamma\n")
    compiled = uv(
        "pip",
        "compile",
        str(tmp_path / "requirements.in"),
        "--index-url",
        world.patched,
        "--no-header",
        cache=cache,
    )
    assert compiled.returncode == 0, compiled.stderr
    assert "mtsv-alpha==2.0" in compiled.stdout

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0"\nrequires-python = ">=3.9"\n'
        'dependencies = ["mtsv-beta", "mtsv-gamma"]\n'
    )
    locked = uv("lock", "--default-index", world.patched, cwd=project, cache=cache)
    assert locked.returncode == 0, locked.stderr
    lock = (project / "uv.lock").read_text()
    assert 'name = "mtsv-alpha"\nversion = "2.0"' in lock


@pytest.mark.parametrize("accept", [ACCEPT_JSON_ONLY, ACCEPT_HTML_ONLY], ids=["json", "html"])
@pytest.mark.parametrize("view", ["plain", "patched"])
def test_pypi_simple_reads_every_page_without_warnings(
    world: World, accept: str, view: str
) -> None:
    endpoint = world.plain if view == "plain" else world.patched
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with PyPISimple(endpoint=endpoint, accept=accept) as client:
            index = client.get_index_page()
            assert sorted(index.projects) == ["mtsv-alpha", "mtsv-beta", "mtsv-delta", "mtsv-gamma"]
            for name in index.projects:
                page = client.get_project_page(name)
                assert page.packages
                for package in page.packages:
                    assert package.has_metadata is True
                    assert package.digests["sha256"]
                    raw, _ = parse_email(client.get_package_metadata(package))
                    assert canonicalize_name(raw["name"]) == name
                    assert raw["version"] == package.version


def test_a_rewritten_wheel_is_made_once_and_matches_its_listed_hash(world: World) -> None:
    with httpx.Client(headers={"Accept": "application/vnd.pypi.simple.v1+json"}) as http:
        # The first page makes the wheel (or an earlier test did); nothing after it downloads.
        first = http.get(world.patched + "mtsv-beta/").json()
        world.index.requests.clear()
        pages = [http.get(world.patched + "mtsv-beta/").json() for _ in range(2)]
        assert first == pages[0] == pages[1]
        (wheel,) = first["files"]
        served = http.get(world.server.url + wheel["url"]).content
        assert http.get(world.server.url + wheel["url"]).content == served
    assert world.index.requests == []
    assert hashlib.sha256(served).hexdigest() == wheel["hashes"]["sha256"]
    assert len(served) == wheel["size"]
    # No "@" or "," in a path segment: PDM reads a link with "@" as a VCS reference.
    assert f"/u/relaxed%40{world.meta.resolve(None)}/files/" in wheel["url"]
    assert "@" not in wheel["url"]
    assert "," not in wheel["url"]
