"""`metasrv sync --with-dependencies`: a closed mirror's seed, from a real local index."""

from __future__ import annotations

from pathlib import Path

from metasrv.cli.main import main
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from tests.distributions import build_sdist, build_wheel
from tests.indexserver import serve_index


def test_dependencies_are_followed_through_extras_markers_and_build_backends(
    tmp_path: Path,
) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    build_wheel(archives, "cl-app", "0.9", requires_dist=["cl-only-old"])
    build_wheel(
        archives,
        "cl-app",
        "1.0",
        requires_dist=["cl-lib[fast]>=1", 'cl-win ; sys_platform == "win32"'],
    )
    build_wheel(
        archives,
        "cl-lib",
        "1.0",
        requires_dist=['cl-speed ; extra == "fast"'],
        provides_extra=["fast"],
    )
    build_wheel(archives, "cl-speed", "1.0", requires_dist=["cl-from-sdist"])
    build_wheel(archives, "cl-win", "1.0")
    build_sdist(
        archives,
        "cl-from-sdist",
        "1.0",
        pyproject='[build-system]\nrequires = ["cl-backend>=1"]\nbuild-backend = "cl_backend"\n',
    )
    build_sdist(archives, "cl-no-build-system", "1.0", pyproject="[project]\nname = 'x'\n")
    build_wheel(archives, "cl-backend", "1.0", requires_dist=["cl-no-build-system"])
    for name in ("cl-only-old", "setuptools", "wheel", "cl-unrelated"):
        build_wheel(archives, name, "1.0")
    meta = tmp_path / "meta"
    with serve_index(archives) as index:
        assert main(["init", str(meta), "--source", index.simple_url]) == 0
        arguments = ["sync", "--repo", str(meta), "--with-dependencies", "CL_App"]
        assert main(arguments) == 0
    storage = Storage(meta)
    assert set(Catalog(storage).list_projects(storage.resolve(None))) == {
        "cl-app",
        "cl-lib",
        "cl-speed",
        "cl-win",
        "cl-from-sdist",
        "cl-backend",
        "cl-no-build-system",
        "setuptools",  # what an sdist without [build-system] is built with (PEP 517)
        "wheel",
    }


def test_with_dependencies_names_projects() -> None:
    assert main(["sync", "--all", "--with-dependencies"]) == 2
