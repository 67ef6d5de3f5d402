"""build-metadata driven in-process: what a run records, counts and reports, and who else writes."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from metasrv.errors import InvalidInput
from metasrv.index.archives import MAX_SDIST_BYTES
from metasrv.index.buildenvs import built_on
from metasrv.index.buildrun import (
    AGAIN_NAME,
    LOG_NAME,
    BuildOptions,
    BuildSummary,
    build_metadata,
    start_in_background,
)
from metasrv.index.builds import BuildResult
from metasrv.index.sandbox import Limits
from metasrv.model import (
    CoreMetadata,
    DistFile,
    MetadataStatus,
    Project,
    Release,
    SourceState,
)
from metasrv.names import core_metadata_path, normalize_name, project_path
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import Catalog
from metasrv.repo.projectfile import write_project
from metasrv.repo.storage import Storage
from tests.buildbackend import build_backend_wheel, build_dynamic_sdist, build_in_tree_sdist
from tests.builders import commit_projects, create_meta_repository, make_file
from tests.deadlines import (
    SUBPROCESS_DEADLINE_SECONDS,
    BoundedThread,
    poll_until,
    wait_for_exit,
)
from tests.indexserver import LocalIndex, serve_index

DEADLINE_SECONDS = 60
LIMITS = Limits(
    wall_seconds=60, cpu_seconds=10, memory_bytes=1024**3, processes=16, output_bytes=1024**2
)


@dataclass
class Index:
    """A local index with the test backend, and a folder for the sdists the tests build."""

    server: LocalIndex
    sdists: Path
    environments: Path

    def options(self, **changes: object) -> BuildOptions:
        options = BuildOptions(self.server.simple_url, self.environments, LIMITS)
        return replace(options, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    root = tmp_path_factory.mktemp("buildrun")
    (root / "index").mkdir()
    (root / "sdists").mkdir()
    build_backend_wheel(root / "index")
    with serve_index(root / "index") as server:
        yield Index(server, root / "sdists", root / "environments")


def dynamic_file(sdist: Path, *, url: str | None = None, **changes: object) -> DistFile:
    """Return the record sync makes of a dynamic sdist on disk."""
    record = DistFile(
        filename=sdist.name,
        url=url or sdist.as_uri(),
        hashes={"sha256": hashlib.sha256(sdist.read_bytes()).hexdigest()},
        size=sdist.stat().st_size,
        metadata_status=MetadataStatus.DYNAMIC,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def project_of(name: str, *files: DistFile) -> Project:
    return Project.create(name, [Release.from_files("1.0", files)])


def recorded(storage: Storage, name: str, branch: str | None = None) -> dict[str, DistFile]:
    project = Catalog(storage).get_project(storage.resolve(branch), name)
    return {f.filename: f for r in project.releases for f in r.files}


Seen = list[tuple[str, BuildResult]]


def run(
    storage: Storage,
    options: BuildOptions,
    names: tuple[str, ...] = (),
    during: Callable[[str], None] | None = None,
) -> tuple[BuildSummary, Seen]:
    """Run build-metadata; ``during`` runs after each build, as a concurrent writer would."""
    seen: Seen = []

    def progress(filename: str, result: BuildResult) -> None:
        seen.append((filename, result))
        if during is not None:
            during(filename)

    return build_metadata(storage, names, options, progress), seen


def test_a_run_records_each_build_commits_per_project_and_reports_each_sdist(
    index: Index, tmp_path: Path
) -> None:
    good = build_dynamic_sdist(index.sdists, "rec-good", "1.0", requires_dist=("idna",))
    bad = build_dynamic_sdist(index.sdists, "rec-bad", "1.0", code='print "hello"')
    worse = build_dynamic_sdist(index.sdists, "rec-bad", "2.0", code='print "hello"')
    wheel = make_file("rec_good-1.0-py3-none-any.whl")
    older = make_file("rec_good-0.9-py3-none-any.whl")
    # What the source said of the page last time: the next sync's conditional request.
    source_state = SourceState(etag='"page-7"', serial=7)
    good_project = Project.create(
        "rec-good",
        [
            Release.from_files("0.9", (older,)),
            Release.from_files("1.0", (dynamic_file(good), wheel)),
        ],
        source_state,
    )
    # The index listed a PEP 658 hash for this sdist: a failed build does not keep it.
    listed = dynamic_file(bad, core_metadata_sha256="a" * 64, core_metadata_stored=True)
    bad_project = Project.create(
        "rec-bad",
        [Release.from_files("1.0", (listed,)), Release.from_files("2.0", (dynamic_file(worse),))],
    )
    storage = create_meta_repository(tmp_path / "meta", good_project, bad_project)
    summary, seen = run(storage, index.options())
    assert [filename for filename, _result in seen] == [bad.name, worse.name, good.name]
    assert (summary.built, summary.failed, summary.not_downloaded) == (1, 2, 0)
    assert dict(summary.reasons) == {"python 2 only": 2}
    assert len(summary.seconds) == 3
    assert all(seconds > 0 for seconds in summary.seconds)
    assert len(summary.commits) == 2
    assert storage.resolve(None) == summary.commits[-1]
    built = recorded(storage, "rec-good")[good.name]
    assert built.metadata_status is MetadataStatus.BUILT
    assert built.metadata is not None
    assert built.metadata.requires_dist == ("idna",)
    assert (built.metadata_reason, built.metadata_built_on) == (None, built_on())
    assert Catalog(storage).get_project(storage.resolve(None), "rec-good").source_state == (
        source_state
    )
    document = seen[2][1].document
    assert document is not None
    digest = hashlib.sha256(document).hexdigest()
    assert (built.core_metadata_sha256, built.core_metadata_stored) == (digest, True)
    assert storage.read(storage.resolve(None), core_metadata_path(digest)) == document
    assert recorded(storage, "rec-good")[wheel.filename] == wheel
    assert recorded(storage, "rec-good")[older.filename] == older
    failed = recorded(storage, "rec-bad")[bad.name]
    assert failed.metadata_status is MetadataStatus.BUILD_FAILED
    assert (failed.metadata, failed.metadata_reason) == (None, "python 2 only")
    assert (failed.core_metadata_sha256, failed.core_metadata_stored) == (None, False)
    assert failed.metadata_built_on is None
    # A second run finds nothing left to build, and commits nothing.
    again, seen_again = run(storage, index.options())
    assert (again.built, again.failed, again.commits, seen_again) == (0, 0, [], [])


def test_only_the_named_projects_are_built_and_failed_builds_only_when_retried(
    index: Index, tmp_path: Path
) -> None:
    named = build_dynamic_sdist(index.sdists, "named-one", "1.0")
    other = build_dynamic_sdist(index.sdists, "named-other", "1.0")
    failed = dynamic_file(named, metadata_status=MetadataStatus.BUILD_FAILED, metadata_reason="x")
    # A static sdist and an sdist built before are not built again, even with retry_failed.
    static = dynamic_file(named, filename="named_one-1.0.zip", metadata_status=None)
    static = replace(static, metadata=CoreMetadata(metadata_version="2.2"))
    built = make_file("named_one-1.0-1.tar.gz")
    storage = create_meta_repository(
        tmp_path / "meta",
        project_of("named-one", failed, static, built),
        project_of("named-other", dynamic_file(other)),
    )
    summary, seen = run(storage, index.options(), ("Named_One",))
    assert (summary.built, summary.failed, seen) == (0, 0, [])
    summary, seen = run(storage, index.options(retry_failed=True), ("Named_One",))
    assert [filename for filename, _result in seen] == [named.name]
    rebuilt = recorded(storage, "named-one")[named.name]
    assert (rebuilt.metadata_status, rebuilt.metadata_reason) == (MetadataStatus.BUILT, None)
    assert recorded(storage, "named-one")[static.filename] == static
    assert recorded(storage, "named-other")[other.name].metadata_status is MetadataStatus.DYNAMIC


def test_builds_are_recorded_on_the_branch_the_options_name(index: Index, tmp_path: Path) -> None:
    sdist = build_dynamic_sdist(index.sdists, "branched", "1.0")
    storage = create_meta_repository(tmp_path / "meta")
    main_head = storage.resolve(None)
    files = {
        f"data/{project_path(normalize_name('branched'))}": write_project(
            project_of("branched", dynamic_file(sdist))
        )
    }
    storage.commit("pulled", files, "pull", start_point=main_head)
    summary, _seen = run(storage, index.options(branch="pulled"))
    assert summary.built == 1
    assert storage.resolve(None) == main_head
    assert recorded(storage, "branched", "pulled")[sdist.name].metadata_status is (
        MetadataStatus.BUILT
    )


def test_the_limits_of_the_options_stop_a_build(index: Index, tmp_path: Path) -> None:
    code = "import sys\nsys.stdout.write('x' * 3 * 1024 * 1024)\n"
    sdist = build_dynamic_sdist(index.sdists, "chatty", "1.0", code=code)
    storage = create_meta_repository(tmp_path / "meta", project_of("chatty", dynamic_file(sdist)))
    summary, _seen = run(storage, index.options())
    assert dict(summary.reasons) == {"printed more than 1 MB": 1}


def test_a_sync_asking_a_running_build_to_look_again_gets_its_new_sdist_built(
    index: Index, tmp_path: Path
) -> None:
    first = build_dynamic_sdist(index.sdists, "again-first", "1.0")
    later = build_dynamic_sdist(index.sdists, "again-later", "1.0")
    storage = create_meta_repository(
        tmp_path / "meta", project_of("again-first", dynamic_file(first))
    )

    def sync_meanwhile(filename: str) -> None:
        if filename == first.name:
            commit_projects(storage, project_of("again-later", dynamic_file(later)))
            (storage.path / AGAIN_NAME).touch()

    summary, seen = run(storage, index.options(), during=sync_meanwhile)
    assert [filename for filename, _result in seen] == [first.name, later.name]
    assert summary.built == 2
    assert recorded(storage, "again-later")[later.name].metadata_status is MetadataStatus.BUILT
    assert not (storage.path / AGAIN_NAME).exists()


def test_a_run_for_named_projects_does_not_look_again(index: Index, tmp_path: Path) -> None:
    first = build_dynamic_sdist(index.sdists, "once-first", "1.0")
    later = build_dynamic_sdist(index.sdists, "once-later", "1.0")
    storage = create_meta_repository(
        tmp_path / "meta", project_of("once-first", dynamic_file(first))
    )

    def sync_meanwhile(filename: str) -> None:
        commit_projects(storage, project_of("once-later", dynamic_file(later)))
        (storage.path / AGAIN_NAME).touch()

    summary, seen = run(storage, index.options(), ("once-first",), during=sync_meanwhile)
    assert [filename for filename, _result in seen] == [first.name]
    assert summary.built == 1
    assert recorded(storage, "once-later")[later.name].metadata_status is MetadataStatus.DYNAMIC


def test_an_sdist_the_source_replaced_during_its_build_keeps_what_sync_says(
    index: Index, tmp_path: Path
) -> None:
    sdist = build_dynamic_sdist(index.sdists, "replaced", "1.0")
    storage = create_meta_repository(tmp_path / "meta", project_of("replaced", dynamic_file(sdist)))
    newer = dynamic_file(sdist, hashes={"sha256": "0" * 64})

    def sync_meanwhile(filename: str) -> None:
        commit_projects(storage, project_of("replaced", newer))

    summary, _seen = run(storage, index.options(), during=sync_meanwhile)
    assert summary.built == 1
    assert summary.commits == []
    assert recorded(storage, "replaced")[sdist.name] == newer


def test_a_project_removed_during_its_build_stays_removed(index: Index, tmp_path: Path) -> None:
    sdist = build_dynamic_sdist(index.sdists, "removed", "1.0")
    storage = create_meta_repository(tmp_path / "meta", project_of("removed", dynamic_file(sdist)))
    path = f"data/{project_path(normalize_name('removed'))}"

    def remove_meanwhile(filename: str) -> None:
        storage.commit(storage.head_branch(), {path: None}, "remove")

    summary, _seen = run(storage, index.options(), during=remove_meanwhile)
    assert summary.commits == []
    assert storage.read(storage.resolve(None), path) is None


def test_an_sdist_that_cannot_be_downloaded_stays_dynamic_and_is_counted(
    index: Index, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sdist = build_dynamic_sdist(index.sdists, "undownloadable", "1.0")
    tampered = dynamic_file(sdist, hashes={"sha256": "1" * 64})
    missing = dynamic_file(sdist, url=(tmp_path / "gone.tar.gz").as_uri(), filename="gone.tar.gz")
    http_missing = dynamic_file(
        sdist, url=f"{index.server.url}/files/nowhere.tar.gz", filename="nowhere.tar.gz"
    )
    storage = create_meta_repository(
        tmp_path / "meta", project_of("undownloadable", tampered, missing, http_missing)
    )
    head = storage.resolve(None)
    summary, seen = run(storage, index.options())
    assert (summary.not_downloaded, summary.built, summary.failed, seen) == (3, 0, 0, [])
    assert storage.resolve(None) == head
    printed = capsys.readouterr().err
    assert f"not downloaded: {sdist.name}: sha256 differs" in printed
    assert "not downloaded: gone.tar.gz: " in printed
    assert "not downloaded: nowhere.tar.gz: " in printed


def test_an_sdist_served_over_http_is_downloaded_and_checked(index: Index, tmp_path: Path) -> None:
    sdist = build_dynamic_sdist(index.server.folder, "served", "1.0", requires_dist=("six",))
    url = f"{index.server.url}/files/{sdist.name}"
    # Moved once (a CDN's redirect), and listed without a sha256 (only what the index gave).
    index.server.behaviour.faults[f"/files/{sdist.name}"] = ["redirect-loop"]
    record = dynamic_file(sdist, url=url, hashes={"md5": "0" * 32})
    storage = create_meta_repository(tmp_path / "meta", project_of("served", record))
    summary, _seen = run(storage, index.options())
    assert summary.built == 1, summary.reasons
    metadata = recorded(storage, "served")[sdist.name].metadata
    assert metadata is not None
    assert metadata.requires_dist == ("six",)


@pytest.mark.parametrize(
    ("size", "not_downloaded", "printed"),
    [
        (MAX_SDIST_BYTES, 0, ""),
        (MAX_SDIST_BYTES + 1, 1, f"not downloaded: big-1.0.tar.gz: larger than {MAX_SDIST_BYTES}"),
    ],
)
def test_an_sdist_served_over_http_may_be_100_mb_and_no_more(
    index: Index,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    size: int,
    not_downloaded: int,
    printed: str,
) -> None:
    sdist = index.server.folder / "big-1.0.tar.gz"
    with sdist.open("wb") as out:
        out.write(b"not an sdist\n")
        out.truncate(size)
    try:
        record = dynamic_file(sdist, url=f"{index.server.url}/files/{sdist.name}")
        storage = create_meta_repository(tmp_path / "meta", project_of("big", record))
        summary, _seen = run(storage, index.options())
    finally:
        sdist.unlink()
    assert (summary.not_downloaded, summary.failed) == (not_downloaded, 1 - not_downloaded)
    assert printed in capsys.readouterr().err


@pytest.mark.parametrize(
    ("built_name", "reason"),
    [
        ("impostor", "built metadata names 'impostor'"),
        ("-not-a-name-", "built metadata names '-not-a-name-'"),
    ],
)
def test_a_build_whose_metadata_names_another_project_fails(
    index: Index, tmp_path: Path, built_name: str, reason: str
) -> None:
    code = f"METADATA = METADATA.replace('Name: honest', 'Name: {built_name}')\n"
    sdist = build_dynamic_sdist(index.sdists, "honest", "1.0", code=code)
    storage = create_meta_repository(tmp_path / "meta", project_of("honest", dynamic_file(sdist)))
    summary, _seen = run(storage, index.options())
    assert dict(summary.reasons) == {reason: 1}
    assert summary.seconds[0] > 0
    assert recorded(storage, "honest")[sdist.name].metadata_reason == reason


def test_a_run_without_options_is_refused(tmp_path: Path) -> None:
    storage = create_meta_repository(tmp_path / "meta")
    with pytest.raises(
        InvalidInput, match=r"^build-metadata needs an index URL for build requirements$"
    ):
        build_metadata(storage, (), None)


def test_a_background_run_builds_in_a_process_of_its_own_and_logs_beside_the_repository(
    index: Index, tmp_path: Path
) -> None:
    sdist = build_dynamic_sdist(index.sdists, "backgrounded", "1.0", requires_dist=("idna",))
    storage = create_meta_repository(
        tmp_path / "meta", project_of("backgrounded", dynamic_file(sdist))
    )
    config = {
        "format": 1,
        "source": {"url": index.server.simple_url},
        "builds": {"index-url": index.server.simple_url, "environments": str(index.environments)},
    }
    storage.commit(storage.head_branch(), {"metasrv.toml": tomlcodec.dumps(config)}, "builds")
    pid = start_in_background(storage)
    assert pid is not None
    wait_for_exit(pid, "the end of the background run", DEADLINE_SECONDS)
    log = (storage.path / LOG_NAME).read_text()
    assert f"{sdist.name}: built" in log
    assert "built 1, failed 0, not downloaded 0, 1 commits" in log
    assert recorded(storage, "backgrounded")[sdist.name].metadata_status is MetadataStatus.BUILT


def test_a_run_builds_what_a_sync_added_meanwhile_to_a_project_it_has_yet_to_reach(
    index: Index, tmp_path: Path
) -> None:
    first = build_dynamic_sdist(index.sdists, "reach-a", "1.0")
    second = build_dynamic_sdist(index.sdists, "reach-b", "1.0")
    added = build_dynamic_sdist(index.sdists, "reach-b", "2.0")
    storage = create_meta_repository(
        tmp_path / "meta",
        project_of("reach-a", dynamic_file(first)),
        project_of("reach-b", dynamic_file(second)),
    )

    def sync_meanwhile(filename: str) -> None:
        if filename == first.name:
            releases = [
                Release.from_files("1.0", (dynamic_file(second),)),
                Release.from_files("2.0", (dynamic_file(added),)),
            ]
            commit_projects(storage, Project.create("reach-b", releases))

    summary, seen = run(storage, index.options(), during=sync_meanwhile)
    assert [filename for filename, _result in seen] == [first.name, second.name, added.name]
    assert summary.built == 3
    assert recorded(storage, "reach-b")[added.name].metadata_status is MetadataStatus.BUILT


NAMELESS_BACKEND = """\
import os


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    os.makedirs(os.path.join(metadata_directory, "x-1.0.dist-info"))
    with open(os.path.join(metadata_directory, "x-1.0.dist-info", "METADATA"), "w") as out:
        out.write("Metadata-Version: 2.1\\nVersion: 1.0\\nRequires-Dist: idna\\n")
    return "x-1.0.dist-info"
"""


def test_a_build_whose_metadata_names_no_project_fails(index: Index, tmp_path: Path) -> None:
    sdist = build_in_tree_sdist(index.sdists, "nameless", NAMELESS_BACKEND)
    storage = create_meta_repository(tmp_path / "meta", project_of("nameless", dynamic_file(sdist)))
    summary, _seen = run(storage, index.options())
    assert dict(summary.reasons) == {"built metadata has no Name": 1}
    assert summary.seconds[0] > 0
    failed = recorded(storage, "nameless")[sdist.name]
    assert (failed.metadata_status, failed.metadata) == (MetadataStatus.BUILD_FAILED, None)


def _waits_for_lock(lock_file: Path) -> bool:
    """Return whether some process waits to take ``lock_file`` (the ``->`` lines of /proc/locks)."""
    inode = f":{lock_file.stat().st_ino} "
    return any(
        "->" in line and inode in line for line in Path("/proc/locks").read_text().splitlines()
    )


def test_a_commit_made_while_a_run_waits_to_record_its_build_is_kept(
    index: Index, tmp_path: Path
) -> None:
    sdist = build_dynamic_sdist(index.sdists, "contested", "1.0")
    storage = create_meta_repository(
        tmp_path / "meta", project_of("contested", dynamic_file(sdist))
    )
    # A checked-out meta repository, where someone commits by hand with git.
    storage.checkout_head()
    workdir = storage.workdir
    assert workdir is not None
    # Another writer holds the write lock: the run has read the project and waits to commit.
    lock_file = storage.path / "metasrv-write.lock"
    summaries: list[BuildSummary] = []
    with lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runner = BoundedThread(
            lambda: summaries.append(run(storage, index.options())[0]), "build-metadata"
        )
        runner.start()
        poll_until(lambda: _waits_for_lock(lock_file), "the run waiting to commit")
        # Meanwhile the project gains a release, committed by hand with git.
        wheel = make_file("contested-2.0-py3-none-any.whl")
        releases = [
            Release.from_files("1.0", (dynamic_file(sdist),)),
            Release.from_files("2.0", (wheel,)),
        ]
        project_file = workdir / "data" / project_path(normalize_name("contested"))
        project_file.write_bytes(write_project(Project.create("contested", releases)))
        subprocess.run(
            ["git", "-c", "user.name=M", "-c", "user.email=m@example.org", "commit", "-qam", "2.0"],
            cwd=workdir,
            timeout=SUBPROCESS_DEADLINE_SECONDS,
            check=True,
        )
        fcntl.flock(lock, fcntl.LOCK_UN)
    runner.join()
    assert summaries[0].built == 1
    files = recorded(storage, "contested")
    assert files[wheel.filename] == wheel
    assert files[sdist.name].metadata_status is MetadataStatus.BUILT
    assert storage.resolve(None) == summaries[0].commits[-1]
