"""`metasrv sync --with-dependencies`: a closed mirror's seed, from a real local index."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_max_files_leaves_out_big_projects_only_extras_lead_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    build_wheel(
        archives,
        "mf-app",
        "1.0",
        requires_dist=[
            "mf-needed",
            'mf-small ; extra == "s"',
            'mf-big ; extra == "b" and python_version >= "3"',
            'mf-late ; extra == "l"',
            'mf-opt ; extra == "o"',
        ],
        provides_extra=["s", "b", "l", "o"],
    )
    build_wheel(archives, "mf-opt", "1.0", requires_dist=["mf-heavy"])
    build_wheel(archives, "mf-needed", "1.0", requires_dist=["mf-deep"])
    build_wheel(archives, "mf-deep", "1.0", requires_dist=["mf-late", "mf-ghost"])
    build_wheel(archives, "mf-small", "1.0")
    for version in ("1.0", "2.0", "3.0"):
        build_wheel(archives, "mf-big", version)
        build_wheel(archives, "mf-heavy", version)  # required, but only below an extra
        build_wheel(archives, "mf-late", version)  # big too, but a required chain reaches it
    meta = tmp_path / "meta"
    with serve_index(archives) as index:
        assert main(["init", str(meta), "--source", index.simple_url]) == 0
        arguments = ["sync", "--repo", str(meta), "--with-dependencies", "mf-app"]
        assert main([*arguments, "--max-files", "2"]) == 0
    storage = Storage(meta)
    assert set(Catalog(storage).list_projects(storage.resolve(None))) == {
        "mf-app",
        "mf-needed",
        "mf-deep",
        "mf-late",
        "mf-small",
        "mf-opt",
    }
    err = capsys.readouterr().err
    assert "left out: mf-big: 3 files, and only extras lead to it\n" in err
    assert "left out: mf-heavy: 3 files, and only extras lead to it\n" in err
    # A requirement naming a project the source does not have stops nothing.
    assert "left out: mf-ghost: the source has no such project\n" in err


def test_max_files_is_for_with_dependencies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "meta"), "--source", "https://index.test/simple/"]) == 0
    assert main(["sync", "--repo", str(tmp_path / "meta"), "x", "--max-files", "9"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
