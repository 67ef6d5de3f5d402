"""Real pip and uv use metasrv as their index, with and without an understanding."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.metadata import parse_email
from packaging.utils import canonicalize_name
from pypi_simple import ACCEPT_HTML_ONLY, ACCEPT_JSON_ONLY, PyPISimple

from metasrv.cli.main import main
from metasrv.index import archives
from metasrv.index.pages import MIME_SIMPLE_JSON
from metasrv.repo.storage import Storage
from tests.conftest import RunningServer, running_server
from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS
from tests.distributions import build_wheel, metadata_text
from tests.indexserver import IndexBehaviour, LocalIndex, serve_index
from tests.test_understandings import add_rules, register

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
README_INDEX = "http://127.0.0.1:8000/u/pallets/simple/"
PROJECTS = ["mtsv-alpha", "mtsv-beta", "mtsv-delta", "mtsv-gamma"]
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
    _rich_wheel(archives, "mtsv-alpha", "1.0")
    _rich_wheel(archives, "mtsv-alpha", "2.0")
    _rich_wheel(
        archives, "mtsv-beta", "1.0", requires_dist=["mtsv-alpha<2"], requires_python=">=3.8"
    )
    _rich_wheel(archives, "mtsv-gamma", "1.0", requires_dist=["mtsv-alpha>=2"])
    _rich_wheel(
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


def _rich_wheel(folder: Path, name: str, version: str, **fields: Any) -> Path:
    """Build a wheel whose METADATA has what resolvers skip: a summary, classifiers, a body."""
    text = metadata_text(name, version, **fields)
    head, _, _ = text.partition("\n\n")
    extra = "Summary: A test project\nLicense: MIT\nClassifier: Programming Language :: Python"
    body = f"# {name}\n\nA description that only the wheel's own METADATA has.\n"
    return build_wheel(folder, name, version, metadata=f"{head}\n{extra}\n\n{body}")


def readme_block(tool_name: str, language: str, index_url: str) -> str:
    """Return the README's configuration for a tool, pointed at ``index_url``."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Use it from your tools", 1)[1].split("\n## ", 1)[0]
    tool_section = section.split(f"\n### {tool_name}\n", 1)[1].split("\n### ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", tool_section, flags=re.DOTALL)
    assert match is not None, f"README has no {language} block for {tool_name}"
    return match.group(1).replace(README_INDEX, index_url)


def _environment() -> dict[str, str]:
    # Keep this machine's pip and uv configuration (extra indexes, find-links, caps) out of it.
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    environment.update(
        PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", UV_NO_CONFIG="1"
    )
    return environment


def run(
    *args: str, cwd: Path | None = None, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        env={**_environment(), **(extra or {})},
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
    # The pip.conf of the README's "Use it from your tools".
    (tmp_path / "pip.conf").write_text(readme_block("pip", "ini", world.patched))
    result = run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "mtsv-beta",
        "mtsv-gamma",
        extra={"PIP_CONFIG_FILE": str(tmp_path / "pip.conf")},
    )
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
        'dependencies = ["mtsv-beta", "mtsv-gamma"]\n\n' + readme_block("uv", "toml", world.patched)
    )
    # UV_NO_CONFIG would skip the project's own [tool.uv]; user config is kept out instead.
    locked = run(
        str(UV),
        "lock",
        "--cache-dir",
        str(cache),
        cwd=project,
        extra={"UV_NO_CONFIG": "0", "XDG_CONFIG_HOME": str(tmp_path / "config")},
    )
    assert locked.returncode == 0, locked.stderr
    lock = (project / "uv.lock").read_text()
    assert 'name = "mtsv-alpha"\nversion = "2.0"' in lock
    assert f'source = {{ registry = "{world.patched}" }}' in lock


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


def _metadata_in(archive: Path) -> bytes:
    with zipfile.ZipFile(archive) as wheel:
        (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        return wheel.read(name)


def _json_page(http: httpx.Client, index_url: str, name: str) -> dict[str, Any]:
    answer = http.get(f"{index_url}{name}/", headers={"Accept": MIME_SIMPLE_JSON})
    assert answer.status_code == 200, answer.text
    page: dict[str, Any] = answer.json()
    return page


def test_every_metadata_file_is_the_wheels_own_metadata_byte_for_byte(world: World) -> None:
    with httpx.Client(base_url=world.server.url, follow_redirects=True) as http:
        for name in PROJECTS:
            for entry in _json_page(http, world.plain, name)["files"]:
                served = http.get(entry["url"] + ".metadata")
                assert served.status_code == 200, entry["filename"]
                # PEP 658: identical to the file's METADATA, and the hash is of what is served.
                assert served.content == _metadata_in(world.index.folder / entry["filename"])
                assert (
                    hashlib.sha256(served.content).hexdigest() == entry["core-metadata"]["sha256"]
                )
            for entry in _json_page(http, world.patched, name)["files"]:
                patched = http.get(entry["url"] + ".metadata").content
                wheel = http.get(entry["url"]).content
                # A rewritten wheel's .metadata is its rewritten METADATA.
                assert patched == _metadata_in(_saved(world.root / "downloads", entry, wheel))
                assert hashlib.sha256(patched).hexdigest() == entry["core-metadata"]["sha256"]


def _saved(folder: Path, entry: dict[str, Any], content: bytes) -> Path:
    folder.mkdir(exist_ok=True)
    path: Path = folder / entry["filename"]
    path.write_bytes(content)
    return path


def _check_pep_691_700_file(entry: dict[str, Any], versions: list[str]) -> None:
    assert isinstance(entry["filename"], str)
    assert isinstance(entry["url"], str)
    assert "@" not in entry["url"]
    assert "," not in entry["url"]
    assert isinstance(entry["hashes"], dict)
    assert all(isinstance(v, str) for v in entry["hashes"].values())
    assert entry["requires-python"] is None or isinstance(entry["requires-python"], str)
    assert isinstance(entry["yanked"], bool | str)
    # PEP 700: size is required at api-version 1.1; upload-time is ISO 8601 in UTC.
    assert isinstance(entry["size"], int)
    assert not isinstance(entry["size"], bool)
    if "upload-time" in entry:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", entry["upload-time"])
    for key in ("core-metadata", "dist-info-metadata"):
        assert key not in entry or isinstance(entry[key], bool | dict)
    version = archives.version_of_filename(entry["filename"])
    assert version in versions


@pytest.mark.parametrize("view", ["plain", "patched"])
def test_json_pages_follow_pep_691_and_700_with_a_size_on_every_file(
    world: World, view: str
) -> None:
    index_url = world.plain if view == "plain" else world.patched
    with httpx.Client(base_url=world.server.url) as http:
        root = http.get(index_url, headers={"Accept": MIME_SIMPLE_JSON}).json()
        assert root["meta"] == {"api-version": "1.1"}
        assert sorted(p["name"] for p in root["projects"]) == PROJECTS
        for name in PROJECTS:
            page = _json_page(http, index_url, name)
            assert set(page) == {"meta", "name", "versions", "files"}
            assert page["meta"] == {"api-version": "1.1"}
            assert page["name"] == name
            assert all(isinstance(version, str) for version in page["versions"])
            assert page["files"]
            for entry in page["files"]:
                _check_pep_691_700_file(entry, page["versions"])
                size = len(http.get(entry["url"], follow_redirects=True).content)
                assert entry["size"] == size


def _tool_environment(home: Path) -> dict[str, str]:
    # Every cache and setting of Poetry and PDM kept in the test's folder, away from PyPI.
    return {
        "POETRY_CACHE_DIR": str(home / "poetry-cache"),
        "POETRY_CONFIG_DIR": str(home / "poetry-config"),
        "POETRY_VIRTUALENVS_IN_PROJECT": "true",
        "POETRY_NO_INTERACTION": "1",
        "PDM_HOME": str(home / "pdm-home"),
        "PDM_CACHE_DIR": str(home / "pdm-cache"),
        "PDM_CONFIG_FILE": str(home / "pdm-config.toml"),
        "PDM_CHECK_UPDATE": "false",
        "PDM_NON_INTERACTIVE": "1",
    }


def tool(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / args[0]
    assert executable.exists(), f"{args[0]} is not installed; pip install -e '.[test]'"
    return run(str(executable), *args[1:], cwd=cwd, extra=_tool_environment(home))


def _project(folder: Path, tool_table: str) -> Path:
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        '[project]\nname = "app"\nversion = "0"\nrequires-python = ">=3.9"\n'
        'dependencies = ["mtsv-beta", "mtsv-gamma"]\n\n' + tool_table
    )
    return folder


def _installed_metadata(project: Path, name: str) -> bytes:
    (path,) = project.glob(f".venv/lib/python*/site-packages/{name}-*.dist-info/METADATA")
    return path.read_bytes()


def _served_metadata(world: World, name: str) -> bytes:
    with httpx.Client(base_url=world.server.url) as http:
        (entry,) = _json_page(http, world.patched, name)["files"]
        return http.get(entry["url"] + ".metadata").content


@pytest.mark.parametrize(
    ("name", "tool_table", "lock_file"),
    [
        ("poetry", "[tool.poetry]\npackage-mode = false\n\n", "poetry.lock"),
        ("pdm", "[tool.pdm]\ndistribution = false\n\n", "pdm.lock"),
    ],
)
def test_poetry_and_pdm_lock_and_install_with_the_understanding(
    world: World, tmp_path: Path, name: str, tool_table: str, lock_file: str
) -> None:
    readme_heading = {"poetry": "Poetry", "pdm": "PDM"}[name]
    project = _project(
        tmp_path / "app", tool_table + readme_block(readme_heading, "toml", world.patched)
    )
    locked = tool(tmp_path, name, "lock", cwd=project)
    assert locked.returncode == 0, locked.stdout + locked.stderr
    assert 'name = "mtsv-alpha"\nversion = "2.0"' in (project / lock_file).read_text()
    install = tool(tmp_path, name, "install", cwd=project)
    assert install.returncode == 0, install.stdout + install.stderr
    # The installed METADATA is the rewritten wheel's, which is what .metadata served.
    assert _installed_metadata(project, "mtsv_beta") == _served_metadata(world, "mtsv-beta")
    assert b"Requires-Dist: mtsv-alpha\n" in _installed_metadata(project, "mtsv_beta")
    assert b"Version: 2.0" in _installed_metadata(project, "mtsv_alpha")


def test_pip_tools_compiles_with_the_understanding(world: World, tmp_path: Path) -> None:
    (tmp_path / "requirements.in").write_text("mtsv-beta\nmtsv-gamma\n")
    compiled = tool(
        tmp_path,
        "pip-compile",
        "--index-url",
        world.patched,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-header",
        "--no-annotate",
        "--no-emit-index-url",
        "--output-file",
        "-",
        "requirements.in",
        cwd=tmp_path,
    )
    assert compiled.returncode == 0, compiled.stderr
    assert compiled.stdout.split() == ["mtsv-alpha==2.0", "mtsv-beta==1.0", "mtsv-gamma==1.0"]


def test_a_folder_of_wheels_as_the_source_installs_with_pip_and_uv(tmp_path: Path) -> None:
    folder = tmp_path / "bucket"
    folder.mkdir()
    _rich_wheel(folder, "mtsv-local", "1.0", requires_dist=["mtsv-dep"])
    _rich_wheel(folder, "mtsv-dep", "1.0")
    assert main(["init", str(tmp_path / "meta"), "--source", str(folder)]) == 0
    assert main(["sync", "--all", "--repo", str(tmp_path / "meta")]) == 0
    with running_server(["--repo", str(tmp_path / "meta")]) as server:
        index_url = f"{server.url}/simple/"
        with httpx.Client(base_url=server.url) as http:
            (entry,) = _json_page(http, index_url, "mtsv-local")["files"]
            # Clients cannot follow a redirect to file://; metasrv sends the bytes itself.
            download = http.get(entry["url"])
            assert download.status_code == 200
            assert download.content == (folder / entry["filename"]).read_bytes()
            assert http.get(entry["url"] + ".metadata").content == _metadata_in(
                folder / entry["filename"]
            )
        python = new_venv(tmp_path / "pipenv")
        result = pip(python, "install", "--index-url", index_url, "mtsv-local")
        assert result.returncode == 0, result.stderr
        assert installed(python) == {"mtsv-dep": "1.0", "mtsv-local": "1.0"}
        cache = tmp_path / "uvcache"
        assert uv("venv", str(tmp_path / "uvenv"), cache=cache).returncode == 0
        result = uv(
            "pip",
            "install",
            "--python",
            str(tmp_path / "uvenv"),
            "--index-url",
            index_url,
            "mtsv-local",
            cache=cache,
        )
        assert result.returncode == 0, result.stderr
        assert installed(tmp_path / "uvenv/bin/python") == {"mtsv-dep": "1.0", "mtsv-local": "1.0"}
