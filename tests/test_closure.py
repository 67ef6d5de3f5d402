"""`metasrv sync --with-dependencies`: a closed mirror's seed, from a real local index."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from metasrv.cli.main import main
from metasrv.index.client import FetchOptions
from metasrv.index.closure import newest_release, requirement_names, sync_with_dependencies
from metasrv.index.sync import SyncOptions, SyncSummary, sync
from metasrv.model import Project, Release
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from tests.builders import make_file
from tests.distributions import build_sdist, build_wheel
from tests.indexserver import IndexBehaviour, serve_index


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


FAST = SyncOptions(fetch=FetchOptions(backoff_seconds=0.01, timeout_seconds=5))


def closure(archives: Path, tmp_path: Path, *names: str) -> tuple[set[str], SyncSummary]:
    """Sync ``names`` with their dependencies from ``archives``; return what the mirror holds."""
    meta = tmp_path / "meta"
    with serve_index(archives) as index:
        assert main(["init", str(meta), "--source", index.simple_url]) == 0
        storage = Storage(meta)
        summary = sync_with_dependencies(storage, index.simple_url, names, FAST)
    return set(Catalog(storage).list_projects(storage.resolve(None))), summary


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    folder = tmp_path / "archives"
    folder.mkdir()
    for name in ("setuptools", "wheel", "cl-builder", "cl-evil"):
        build_wheel(folder, name, "1.0")
    return folder


def test_an_sdist_beside_a_wheel_is_not_unpacked_for_build_requirements(
    archives: Path, tmp_path: Path
) -> None:
    build_wheel(archives, "cl-mixed", "1.0")
    build_sdist(archives, "cl-mixed", "1.0", pyproject=BUILT_BY_BUILDER)
    assert closure(archives, tmp_path, "cl-mixed")[0] == {"cl-mixed"}


BUILT_BY_BUILDER = '[build-system]\nrequires = ["cl-builder"]\nbuild-backend = "cl_builder"\n'


@pytest.mark.parametrize(
    ("pyproject", "needed"),
    [
        (BUILT_BY_BUILDER, {"cl-builder"}),
        ('[build-system]\nrequires = ["cl-builder"]\n', {"cl-builder", "setuptools", "wheel"}),
        (
            '[build-system]\nrequires = ["cl-builder"]\n'
            'build-backend = "setuptools.build_meta:__legacy__"\n',
            {"cl-builder", "setuptools", "wheel"},
        ),
    ],
    ids=["own-backend", "no-backend", "legacy-backend"],
)
def test_an_sdist_only_release_adds_what_its_build_backend_needs(
    archives: Path, tmp_path: Path, pyproject: str, needed: set[str]
) -> None:
    build_sdist(archives, "cl-sdist", "1.0", pyproject=pyproject)
    assert closure(archives, tmp_path, "cl-sdist")[0] == {"cl-sdist", *needed}


def test_an_sdist_whose_bytes_are_not_the_recorded_ones_is_assumed_built_by_setuptools(
    archives: Path, tmp_path: Path
) -> None:
    real = build_sdist(archives, "cl-sdist", "1.0", pyproject=BUILT_BY_BUILDER)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evil = build_sdist(
        elsewhere, "cl-sdist", "1.0", pyproject='[build-system]\nrequires = ["cl-evil"]\n'
    )
    meta = tmp_path / "meta"
    behaviour = IndexBehaviour()
    with serve_index(archives, behaviour) as index:
        assert main(["init", str(meta), "--source", index.simple_url]) == 0
        storage = Storage(meta)
        sync(storage, index.simple_url, ["cl-sdist"], FAST)  # records the real sha256
        behaviour.tampered[real.name] = evil.read_bytes()
        sync_with_dependencies(storage, index.simple_url, ["cl-sdist"], FAST)
    names = set(Catalog(storage).list_projects(storage.resolve(None)))
    assert names == {"cl-sdist", "setuptools", "wheel"}


def test_an_sdist_the_source_fails_to_send_is_assumed_built_by_setuptools(
    archives: Path, tmp_path: Path
) -> None:
    sdist = build_sdist(archives, "cl-sdist", "1.0", pyproject=BUILT_BY_BUILDER)
    meta = tmp_path / "meta"
    behaviour = IndexBehaviour()
    with serve_index(archives, behaviour) as index:
        assert main(["init", str(meta), "--source", index.simple_url]) == 0
        storage = Storage(meta)
        sync(storage, index.simple_url, ["cl-sdist"], FAST)
        behaviour.faults[f"/files/{sdist.name}"] = ["500"] * 20
        sync_with_dependencies(storage, index.simple_url, ["cl-sdist"], FAST)
    names = set(Catalog(storage).list_projects(storage.resolve(None)))
    assert names == {"cl-sdist", "setuptools", "wheel"}


def test_a_project_that_failed_to_sync_does_not_stop_the_others_dependencies(
    archives: Path, tmp_path: Path
) -> None:
    build_wheel(archives, "cl-app", "1.0", requires_dist=["cl-builder"])
    build_wheel(archives, "aa-broken", "1.0", requires_dist=["cl-evil"])
    meta = tmp_path / "meta"
    behaviour = IndexBehaviour(faults={"/simple/aa-broken/": ["500"] * 20})
    with serve_index(archives, behaviour) as index:
        assert main(["init", str(meta), "--source", index.simple_url]) == 0
        storage = Storage(meta)
        summary = sync_with_dependencies(storage, index.simple_url, ["aa-broken", "cl-app"], FAST)
    assert [failed.split(":")[0] for failed in summary.failed_projects] == ["aa-broken"]
    assert set(Catalog(storage).list_projects(storage.resolve(None))) == {"cl-app", "cl-builder"}


def test_the_summary_adds_up_every_round(archives: Path, tmp_path: Path) -> None:
    build_wheel(archives, "cl-a", "1.0", requires_dist=["cl-b"])
    build_wheel(archives, "cl-b", "1.0", requires_dist=["cl-c", "cl-d"])
    build_wheel(archives, "cl-c", "1.0")
    build_wheel(archives, "cl-d", "1.0")
    meta = tmp_path / "meta"
    with serve_index(archives) as index:
        assert main(["init", str(meta), "--source", index.simple_url]) == 0
        storage = Storage(meta)
        summary = sync_with_dependencies(storage, index.simple_url, ["cl-a"], FAST)
        requests = len(index.requests)
    assert (summary.projects, summary.changed, summary.releases_added) == (4, 4, 4)
    assert summary.files_added == 4
    assert len(summary.commits) == 3  # one per round: cl-a, cl-b, then cl-c and cl-d
    assert summary.commits[-1] == storage.resolve(None)
    assert summary.requests == requests
    assert summary.bytes_fetched > 0
    assert summary.exit_code == 0


def release(version: str, *, files: int = 1, yanked: bool = False) -> Release:
    stem = f"p-{version}"
    return Release.from_files(
        version,
        tuple(make_file(f"{stem}-{n}.whl", yanked=yanked) for n in range(files)),
    )


@pytest.mark.parametrize(
    ("releases", "newest"),
    [
        (["1.0", "2.0-yanked", "3.0a1", "4.0-nofiles"], "1.0"),
        (["1.0-yanked", "2.0a1", "3.0-yanked"], "2.0a1"),
        (["1.0-yanked", "2.0-yanked"], "2.0"),
        (["1.0", "2.0"], "2.0"),
        (["1.0", "2.0", "3.0"], "3.0"),
        (["1.0-nofiles"], None),
    ],
)
def test_the_newest_release_prefers_final_then_unyanked_releases_with_files(
    releases: list[str], newest: str | None
) -> None:
    built = []
    for text in releases:
        version, _, kind = text.partition("-")
        built.append(release(version, files=0 if kind == "nofiles" else 1, yanked=kind == "yanked"))
    chosen = newest_release(Project.create("p", built))
    assert (chosen.version_text if chosen else None) == newest


def test_requirement_names_are_normalized_and_skip_what_does_not_parse() -> None:
    assert requirement_names(["not a requirement!", "Foo.Bar[x]>=1", 'baz ; os_name == "nt"']) == {
        "foo-bar",
        "baz",
    }


def test_the_requirements_of_every_file_of_the_newest_release_are_followed(
    archives: Path, tmp_path: Path
) -> None:
    build_wheel(archives, "cl-app", "1.0", requires_dist=["cl-builder"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = build_wheel(elsewhere, "cl-app", "1.0", requires_dist=["cl-evil"])
    other.rename(archives / other.name.replace("-py3-", "-py2-"))
    assert closure(archives, tmp_path, "cl-app")[0] == {"cl-app", "cl-builder", "cl-evil"}


def test_a_closure_onto_another_branch_reads_what_it_synced_there(
    archives: Path, tmp_path: Path
) -> None:
    build_wheel(archives, "cl-app", "1.0", requires_dist=["cl-builder"])
    meta = tmp_path / "meta"
    seen: list[int] = []
    with serve_index(archives) as index:
        assert main(["init", str(meta), "--source", index.simple_url]) == 0
        storage = Storage(meta)
        before = storage.resolve(None)
        summary = sync_with_dependencies(
            storage,
            index.simple_url,
            ["cl-app"],
            replace(FAST, branch="closed"),
            progress=lambda done, total, _: seen.append(done),
        )
    assert storage.resolve(None) == before
    assert storage.resolve("closed") == summary.commits[-1]
    names = Catalog(storage).list_projects(storage.resolve("closed"))
    assert set(names) == {"cl-app", "cl-builder"}
    assert seen  # each round reports its progress
    assert seen[-1] == 1


def test_a_closure_into_an_empty_repository_whose_project_fails_reports_it(
    archives: Path, tmp_path: Path
) -> None:
    build_wheel(archives, "cl-app", "1.0")
    storage = Storage.init(tmp_path / "empty")
    behaviour = IndexBehaviour(faults={"/simple/cl-app/": ["500"] * 20})
    with serve_index(archives, behaviour) as index:
        summary = sync_with_dependencies(storage, index.simple_url, ["cl-app"], FAST)
    assert [failed.split(":")[0] for failed in summary.failed_projects] == ["cl-app"]
    assert summary.commits == []


def test_an_sdist_only_release_adds_both_what_it_requires_and_what_builds_it(
    archives: Path, tmp_path: Path
) -> None:
    build_sdist(archives, "cl-sdist", "1.0", requires_dist=["cl-evil"], pyproject=BUILT_BY_BUILDER)
    assert closure(archives, tmp_path, "cl-sdist")[0] == {"cl-sdist", "cl-evil", "cl-builder"}
