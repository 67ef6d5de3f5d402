"""Build environments: made once per set of requirements, from the given index only."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from metasrv.index.buildenvs import READY, BuildEnvironments, RequirementsUnavailable, find_uv
from tests.buildbackend import BACKEND_SOURCE
from tests.distributions import build_sdist, build_wheel, metadata_text
from tests.indexserver import LocalIndex, serve_index

DEADLINE_SECONDS = 60
IN_TREE_BACKEND = (
    '[build-system]\nrequires = []\nbuild-backend = "tinybackend"\nbackend-path = ["."]\n'
)


@dataclass
class Indexes:
    """The index builds may use, and another one they must not."""

    index: LocalIndex
    elsewhere: LocalIndex


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexes]:
    root = tmp_path_factory.mktemp("buildenvs")
    for name in ("index", "elsewhere"):
        (root / name).mkdir()
    build_wheel(root / "index", "envhelper", "1.0", files={"envhelper/__init__.py": "X = 1\n"})
    build_wheel(root / "index", "envother", "2.0", files={"envother/__init__.py": "Y = 2\n"})
    build_wheel(root / "elsewhere", "onlyelsewhere", "1.0")
    # An sdist that builds with no network (its backend is in the tree): installing it would
    # run its code unsandboxed, so build environments take wheels only.
    build_sdist(
        root / "index",
        "sdistonly",
        "1.0",
        pyproject=IN_TREE_BACKEND,
        files={
            "tinybackend.py": BACKEND_SOURCE,
            "build.py": f"METADATA = {metadata_text('sdistonly', '1.0')!r}\n",
        },
    )
    with serve_index(root / "index") as index, serve_index(root / "elsewhere") as elsewhere:
        yield Indexes(index, elsewhere)


def imports(environment: Path, module: str) -> bool:
    """Return whether the environment's python imports ``module``."""
    completed = subprocess.run(
        [str(environment / "bin" / "python"), "-c", f"import {module}"],
        capture_output=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )
    return completed.returncode == 0


def test_equal_sets_of_requirements_share_one_environment_however_written(
    indexes: Indexes, tmp_path: Path
) -> None:
    # A folder whose parents do not exist yet, as a first run's cache folder.
    environments = BuildEnvironments(tmp_path / "cache" / "envs", indexes.index.simple_url)
    first = environments.ensure(["envhelper>=1.0", "envother"])
    assert imports(first, "envhelper")
    assert imports(first, "envother")
    assert (first / READY).read_text() == "envhelper>=1.0\nenvother\n"
    requests = len(indexes.index.requests)
    again = environments.ensure(["envother", "envhelper >= 1.0", "envother"])
    assert again == first
    assert len(indexes.index.requests) == requests
    assert environments.ensure(["envhelper"]) != first
    other_index = BuildEnvironments(environments.folder, indexes.elsewhere.simple_url)
    assert other_index.ensure([]) != environments.ensure([])


def test_requirements_not_on_the_index_fail_and_leave_no_environment(
    indexes: Indexes, tmp_path: Path
) -> None:
    environments = BuildEnvironments(tmp_path / "envs", indexes.index.simple_url)
    with pytest.raises(
        RequirementsUnavailable, match="could not install build requirements: "
    ) as raised:
        environments.ensure(["envhelper", "onlyelsewhere"])
    # The installer's own error line, not whatever it printed last.
    detail = raised.value.message.removeprefix("could not install build requirements: ")
    assert detail.lower().startswith("error"), detail
    assert [path for path in environments.folder.iterdir() if (path / "bin").exists()] == []
    assert [path for path in environments.folder.iterdir() if path.is_dir()] == [
        environments.folder / "uv-cache"
    ]


def test_the_user_s_pip_and_uv_settings_add_no_index(
    indexes: Indexes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("UV_EXTRA_INDEX_URL", "UV_INDEX", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.setenv(variable, indexes.elsewhere.simple_url)
    monkeypatch.setenv("UV_FIND_LINKS", str(indexes.elsewhere.folder))
    environments = BuildEnvironments(tmp_path / "envs", indexes.index.simple_url)
    with pytest.raises(RequirementsUnavailable):
        environments.ensure(["onlyelsewhere"])
    assert indexes.elsewhere.requests == []


def _installed_elsewhere(folder: Path, name: str) -> Path:
    """Return a folder that holds only the record of ``name`` being installed, not its code."""
    dist_info = folder / f"{name}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    return folder


def test_an_environment_left_half_made_is_made_again(indexes: Indexes, tmp_path: Path) -> None:
    environments = BuildEnvironments(tmp_path / "envs", indexes.index.simple_url)
    environment = environments.ensure(["envhelper"])
    # What a run killed while installing leaves behind: no READY, stray files.
    (environment / READY).unlink()
    (environment / "stray.txt").write_text("half made\n")
    assert environments.ensure(["envhelper"]) == environment
    assert (environment / READY).exists()
    assert not (environment / "stray.txt").exists()
    assert imports(environment, "envhelper")


@pytest.mark.parametrize("requirement", ["not a requirement!", "envhelper>>1"])
def test_an_invalid_requirement_is_refused_by_name(
    indexes: Indexes, tmp_path: Path, requirement: str
) -> None:
    environments = BuildEnvironments(tmp_path / "envs", indexes.index.simple_url)
    with pytest.raises(RequirementsUnavailable, match="invalid build requirement") as raised:
        environments.ensure(["envhelper", requirement])
    assert repr(requirement) in raised.value.message
    assert not environments.folder.exists()


def test_build_requirements_are_installed_from_wheels_only(
    indexes: Indexes, tmp_path: Path
) -> None:
    environments = BuildEnvironments(tmp_path / "envs", indexes.index.simple_url)
    with pytest.raises(RequirementsUnavailable):
        environments.ensure(["sdistonly"])
    assert not any(path.endswith(".tar.gz") for path, _range in indexes.index.requests)


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_builds_use_the_uv_beside_metasrv_s_interpreter_else_the_one_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interpreter = _executable(tmp_path / "venv" / "bin" / "python")
    beside = _executable(tmp_path / "venv" / "bin" / "uv")
    on_path = _executable(tmp_path / "path" / "uv")
    monkeypatch.setattr(sys, "executable", str(interpreter))
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert find_uv() == str(beside)
    beside.unlink()
    assert find_uv() == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "venv" / "bin"))
    assert find_uv() is None


@pytest.mark.parametrize(
    ("said", "reason"),
    [
        (
            "resolving envhelper\\nfetching envhelper\\nkilled: out of memory",
            "killed: out of memory",
        ),
        ("", "?"),
    ],
)
def test_an_installer_that_fails_without_saying_error_is_reported_by_its_last_words(
    indexes: Indexes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str, reason: str
) -> None:
    uv = _executable(tmp_path / "venv" / "bin" / "uv")
    uv.write_text(f"#!/bin/sh\nprintf '{said}' >&2\nexit 1\n")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    environments = BuildEnvironments(tmp_path / "envs", indexes.index.simple_url)
    with pytest.raises(RequirementsUnavailable) as raised:
        environments.ensure(["envhelper"])
    assert raised.value.message == f"could not install build requirements: {reason}"


def test_without_uv_build_environments_are_made_with_pip_from_wheels_only_whatever_pythonpath_holds(
    indexes: Indexes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A metasrv installed where no uv is beside its interpreter or on PATH.
    monkeypatch.setattr(sys, "executable", str(Path(sys.base_prefix) / "bin" / "python3"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert find_uv() is None
    environments = BuildEnvironments(tmp_path / "envs", indexes.index.simple_url)
    with pytest.raises(RequirementsUnavailable, match="could not install build requirements"):
        environments.ensure(["sdistonly"])
    # pip counts what the user's PYTHONPATH holds as installed: builds must not see it.
    monkeypatch.setenv("PYTHONPATH", str(_installed_elsewhere(tmp_path / "elsewhere", "envhelper")))
    environment = environments.ensure(["envhelper"])
    assert imports(environment, "envhelper")
    assert not any(path.endswith(".tar.gz") for path, _range in indexes.index.requests)
