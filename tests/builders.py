"""Build real model records and meta repositories for tests."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path

from metasrv.cli.main import main
from metasrv.config import MetaConfig, PullThroughConfig
from metasrv.model import (
    CoreMetadata,
    DistFile,
    MetadataStatus,
    Project,
    Release,
)
from metasrv.names import project_path
from metasrv.repo import tomlcodec
from metasrv.repo.projectfile import write_project
from metasrv.repo.storage import CommitId, Storage
from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS

SOURCE_URL = "https://index.test/simple/"


def make_file(
    filename: str,
    *,
    requires_dist: Iterable[str] = (),
    requires_python: str | None = None,
    yanked: bool | str = False,
    metadata: CoreMetadata | bool | None = True,
) -> DistFile:
    """Return a file whose metadata is built from the keyword arguments."""
    if metadata is True:
        metadata = CoreMetadata(
            metadata_version="2.1",
            requires_dist=tuple(requires_dist),
            requires_python=requires_python,
        )
    return DistFile(
        filename=filename,
        url=f"https://files.test/{filename}",
        hashes={"sha256": hashlib.sha256(filename.encode()).hexdigest()},
        size=len(filename) * 100,
        upload_time="2024-01-02T03:04:05Z",
        requires_python=requires_python,
        yanked=yanked,
        metadata=metadata or None,
        metadata_status=None if metadata else MetadataStatus.PENDING,
    )


def make_project(name: str, versions: dict[str, list[str]] | Iterable[str]) -> Project:
    """Return a project with a wheel per version; a dict maps versions to requires-dist."""
    requirements = versions if isinstance(versions, dict) else {v: [] for v in versions}
    stem = name.replace("-", "_")
    releases = [
        Release.from_files(
            version, (make_file(f"{stem}-{version}-py3-none-any.whl", requires_dist=deps),)
        )
        for version, deps in requirements.items()
    ]
    return Project.create(name, releases)


def project_files(*projects: Project) -> dict[str, bytes | None]:
    """Return the data files of projects, keyed by repository path."""
    return {
        f"data/{project_path(project.normalized_name)}": write_project(project)
        for project in projects
    }


def commit_projects(storage: Storage, *projects: Project, message: str = "update") -> CommitId:
    """Commit projects to the served branch and return the new commit."""
    commit_id = storage.commit(storage.head_branch(), project_files(*projects), message)
    assert commit_id is not None
    return commit_id


def create_meta_repository(path: Path, *projects: Project) -> Storage:
    """Create a meta repository holding ``projects`` in its first commit."""
    storage = Storage.init(path)
    files = project_files(*projects)
    # SOURCE_URL serves nothing: these repositories answer from git alone.
    config = MetaConfig(source_url=SOURCE_URL, pull_through=PullThroughConfig(enabled=False))
    files["metasrv.toml"] = tomlcodec.dumps(config.to_toml())
    storage.commit("main", files, "Create meta repository")
    return storage


def allow_repositories(storage: Storage, *prefixes: str) -> None:
    """Commit a metasrv.toml whose [understandings] allow lists ``prefixes``."""
    config = MetaConfig(
        source_url=SOURCE_URL,
        pull_through=PullThroughConfig(enabled=False),
        understandings_allow=prefixes,
    )
    storage.commit(
        storage.head_branch(), {"metasrv.toml": tomlcodec.dumps(config.to_toml())}, "allow"
    )


FACTS = Path(__file__).resolve().parents[1] / "markers" / "facts"


def add_marker_sets(storage: Storage, sets: dict[str, str], months: int = 36) -> None:
    """Commit the real marker facts and generate ``name -> platforms`` sets with the CLI."""
    facts: dict[str, bytes | None] = {
        f"markers/facts/{path.name}": path.read_bytes() for path in FACTS.glob("*.toml")
    }
    storage.commit(storage.head_branch(), facts, "marker facts")
    for name, platforms in sets.items():
        arguments = ["markers", "generate", name, "--platforms", platforms]
        arguments += ["--months", str(months), "--as-of", "2026-11-25", "--repo", str(storage.path)]
        assert main(arguments) == 0


def git(folder: Path, *args: str) -> str:
    """Run git in ``folder`` (a working tree) and return what it printed, unstripped."""
    return subprocess.run(
        ["git", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
        timeout=SUBPROCESS_DEADLINE_SECONDS,
    ).stdout
