"""Build the metadata of a meta repository's dynamic sdists and commit what each build gave."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx
from packaging.utils import NormalizedName

from metasrv.errors import Conflict, InvalidInput, NotFound
from metasrv.index.archives import MAX_SDIST_BYTES, is_wheel
from metasrv.index.buildenvs import BuildEnvironments, built_on
from metasrv.index.builds import Builder, BuildResult
from metasrv.index.sandbox import Limits, find_bubblewrap
from metasrv.model import DistFile, MetadataStatus, Project, Release
from metasrv.names import core_metadata_path, normalize_name, project_path
from metasrv.repo.catalog import DATA_ROOT, Catalog
from metasrv.repo.projectfile import write_project
from metasrv.repo.storage import CommitId, Storage

LOCK_NAME = "metasrv-build-metadata.lock"
# Left by a sync while a run holds the lock: the run then scans the repository once more.
AGAIN_NAME = "metasrv-build-metadata.again"
LOG_NAME = "metasrv-build-metadata.log"
COMMIT_ATTEMPTS = 5
SPAWN_TIMEOUT_SECONDS = 60.0
_SPAWN = """import subprocess, sys
log = open(sys.argv[1], "ab")
process = subprocess.Popen(
    sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
)
print(process.pid)
"""
DOWNLOAD_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Where build requirements come from, where environments live, and the limits."""

    index_url: str
    environments: Path
    limits: Limits = field(default_factory=Limits)
    retry_failed: bool = False
    branch: str | None = None


@dataclass(slots=True)
class BuildSummary:
    """What a run built: counts, failures by reason, seconds per build, commits."""

    built: int = 0
    failed: int = 0
    not_downloaded: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)
    commits: list[CommitId] = field(default_factory=list)


Progress = Callable[[str, BuildResult], None]
"""Called with each sdist's filename and what its build gave."""


def build_metadata(
    storage: Storage,
    names: Sequence[str] = (),
    options: BuildOptions | None = None,
    progress: Progress | None = None,
) -> BuildSummary:
    """Build every dynamic sdist of ``names`` (default: every project) and commit the results."""
    if options is None:
        raise InvalidInput("build-metadata needs an index URL for build requirements")
    find_bubblewrap()
    targets = [normalize_name(name) for name in names]
    run = _Run(storage, options, progress)
    # One run at a time per repository: a second (a sync's background run) waits, then finds
    # only what the first left.
    with (storage.path / LOCK_NAME).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        again = storage.path / AGAIN_NAME
        while True:
            again.unlink(missing_ok=True)
            run.build_all(targets)
            if targets or not again.exists():
                return run.summary


class _Run:
    """One run of build-metadata over a repository's branch."""

    def __init__(self, storage: Storage, options: BuildOptions, progress: Progress | None):
        self.storage = storage
        self.catalog = Catalog(storage)
        self.options = options
        self.progress = progress
        self.builder = Builder(
            BuildEnvironments(options.environments, options.index_url), options.limits
        )
        self.branch = options.branch or storage.head_branch()
        self.summary = BuildSummary()

    def build_all(self, targets: Sequence[NormalizedName]) -> None:
        """Build the dynamic sdists of ``targets`` (default: every project), one commit each."""
        head = self.storage.branch_commit(self.branch)
        if head is None:
            return
        for name in targets or sorted(self.catalog.list_projects(head)):
            project = self.catalog.get_project(head, name)
            documents: dict[str, bytes] = {}
            updates = _build_project(
                self.builder,
                project,
                self.options,
                self.summary,
                self.progress,
                documents=documents,
            )
            if updates:
                head = self.commit(project.normalized_name, updates, documents) or head

    def commit(
        self,
        normalized_name: NormalizedName,
        updates: dict[str, DistFile],
        documents: dict[str, bytes],
    ) -> CommitId | None:
        """Record builds on the project as it is now: another writer may have moved the branch.

        ``documents`` are the built METADATA documents by sha256; those of recorded files are
        stored content-addressed beside the project, in the same commit.
        """
        for _attempt in range(COMMIT_ATTEMPTS):
            parent = self.storage.branch_commit(self.branch)
            if parent is None:
                return None
            try:
                project = self.catalog.get_project(parent, normalized_name)
            except NotFound:
                return parent
            updated = _apply(project, updates)
            if updated is None:
                return parent
            path = f"{DATA_ROOT}/{project_path(normalized_name)}"
            changes: dict[str, bytes | None] = {path: write_project(updated)}
            for release in updated.releases:
                for dist_file in release.files:
                    digest = dist_file.core_metadata_sha256
                    if dist_file.filename in updates and digest in documents:
                        changes[core_metadata_path(digest)] = documents[digest]
            message = f"build-metadata {project.name}: {len(updates)} sdists"
            try:
                commit_id = self.storage.commit(
                    self.branch, changes, message, expected_parent=parent
                )
            except Conflict:
                continue
            if commit_id is None:
                return parent
            self.summary.commits.append(commit_id)
            return commit_id
        raise Conflict(
            f"branch {self.branch!r} kept moving; builds of {normalized_name} not recorded"
        )


def start_in_background(storage: Storage) -> int | None:
    """Start ``metasrv build-metadata`` as a process of its own; return its pid.

    When a run is under way, ask it to scan once more instead, and return None.
    """
    with (storage.path / LOCK_NAME).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            (storage.path / AGAIN_NAME).touch()
            return None
    repository = storage.workdir or storage.path
    command = [sys.executable, "-m", "metasrv", "build-metadata", "--repo", str(repository)]
    # A grandchild in a session of its own: never the server's process, never waited for, and
    # not a child this process would have to reap.
    spawned = subprocess.run(
        [sys.executable, "-c", _SPAWN, str(storage.path / LOG_NAME), *command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SPAWN_TIMEOUT_SECONDS,
        check=True,
    )
    return int(spawned.stdout)


def _buildable(dist_file: DistFile, retry_failed: bool) -> bool:
    if is_wheel(dist_file.filename):
        return False
    status = dist_file.metadata_status
    return status is MetadataStatus.DYNAMIC or (
        retry_failed and status is MetadataStatus.BUILD_FAILED
    )


def _build_project(
    builder: Builder,
    project: Project,
    options: BuildOptions,
    summary: BuildSummary,
    progress: Progress | None,
    *,
    documents: dict[str, bytes],
) -> dict[str, DistFile]:
    """Build a project's dynamic sdists; return each built file as it is to be recorded.

    The METADATA each build wrote is added to ``documents`` by its sha256: PEP 658 wants the
    .metadata served to be that document, not one rendered from the fields read out of it.
    """
    updates: dict[str, DistFile] = {}
    for release in project.releases:
        for dist_file in release.files:
            if not _buildable(dist_file, options.retry_failed):
                continue
            with tempfile.TemporaryDirectory(prefix="metasrv-sdist-") as folder:
                sdist = Path(folder) / Path(urlsplit(dist_file.url).path).name
                try:
                    _download(dist_file, sdist)
                except (httpx.HTTPError, OSError, ValueError) as exc:
                    # Not the sdist's fault: it stays dynamic and the next run tries again.
                    summary.not_downloaded += 1
                    print(f"not downloaded: {dist_file.filename}: {exc}", file=sys.stderr)
                    continue
                result = builder.build(sdist)
            result = _check_name(result, project.normalized_name)
            summary.seconds.append(result.seconds)
            if result.metadata is not None and result.document is not None:
                summary.built += 1
                digest = hashlib.sha256(result.document).hexdigest()
                documents[digest] = result.document
                updates[dist_file.filename] = replace(
                    dist_file,
                    metadata=result.metadata,
                    metadata_status=MetadataStatus.BUILT,
                    metadata_reason=None,
                    metadata_built_on=built_on(),
                    core_metadata_sha256=digest,
                    core_metadata_stored=True,
                )
            else:
                summary.failed += 1
                summary.reasons[result.reason or "?"] += 1
                updates[dist_file.filename] = replace(
                    dist_file,
                    metadata=None,
                    metadata_status=MetadataStatus.BUILD_FAILED,
                    metadata_reason=result.reason,
                    metadata_built_on=None,
                    core_metadata_sha256=None,
                    core_metadata_stored=False,
                )
            if progress is not None:
                progress(dist_file.filename, result)
    return updates


def _check_name(result: BuildResult, normalized_name: NormalizedName) -> BuildResult:
    """Refuse metadata that names another project, or none: a build must not speak for another."""
    if result.metadata is None:
        return result
    if result.name is None:
        # Name is a required field: installers refuse metadata without one.
        return BuildResult(None, None, "built metadata has no Name", result.seconds)
    try:
        same = normalize_name(result.name) == normalized_name
    except InvalidInput:
        same = False
    if same:
        return result
    return BuildResult(None, None, f"built metadata names {result.name!r}", result.seconds)


def _download(dist_file: DistFile, destination: Path) -> None:
    """Download an sdist, checking its size and its sha256 against what the index listed."""
    digest = hashlib.sha256()
    if dist_file.url.startswith("file:"):
        content = Path(url2pathname(urlsplit(dist_file.url).path)).read_bytes()
        destination.write_bytes(content)
        digest.update(content)
    else:
        with (
            httpx.stream(
                "GET", dist_file.url, follow_redirects=True, timeout=DOWNLOAD_TIMEOUT_SECONDS
            ) as response,
            destination.open("wb") as out,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes():
                digest.update(chunk)
                out.write(chunk)
                if out.tell() > MAX_SDIST_BYTES:
                    raise ValueError(f"larger than {MAX_SDIST_BYTES} bytes")
    expected = dist_file.hashes.get("sha256")
    if expected is not None and digest.hexdigest() != expected:
        raise ValueError("sha256 differs from the one the index lists")


def _apply(project: Project, updates: dict[str, DistFile]) -> Project | None:
    """Return the project with built files in place of those still unchanged, or None."""
    releases = []
    changed = False
    for release in project.releases:
        if not any(dist_file.filename in updates for dist_file in release.files):
            releases.append(release)
            continue
        files = []
        for dist_file in release.files:
            update = updates.get(dist_file.filename)
            # A file the source replaced since the build started keeps what sync says of it.
            if update is not None and update.hashes == dist_file.hashes:
                files.append(
                    replace(
                        dist_file,
                        metadata=update.metadata,
                        metadata_status=update.metadata_status,
                        metadata_reason=update.metadata_reason,
                        metadata_built_on=update.metadata_built_on,
                        core_metadata_sha256=update.core_metadata_sha256,
                        core_metadata_stored=update.core_metadata_stored,
                    )
                )
                changed = True
            else:
                files.append(dist_file)
        releases.append(Release.from_files(release.version_text, tuple(files)))
    if not changed:
        return None
    return Project.create(project.name, releases, project.source_state)
