"""The repository's own sample is closed, and its metadata documents are what they claim."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from metasrv.index.closure import newest_release, requirement_names
from metasrv.model import Project
from metasrv.names import core_metadata_path
from metasrv.repo import tomlcodec

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SAMPLE = DATA / "sample-projects.txt"


@functools.cache
def _projects() -> dict[str, Project]:
    projects: dict[str, Project] = {}
    for path in sorted(DATA.glob("*/*/*.toml")):
        relative = path.relative_to(DATA).as_posix()
        project = Project.from_toml(tomlcodec.loads(path.read_bytes(), where=relative), relative)
        projects[project.normalized_name] = project
    return projects


def _left_out() -> set[str]:
    """Return the projects the refresh leaves out, as sample-projects.txt lists them."""
    return set(re.findall(r"^# left out: ([a-z0-9-]+)", SAMPLE.read_text(), flags=re.MULTILINE))


def test_every_seed_is_in_the_sample() -> None:
    seeds = [line for line in SAMPLE.read_text().splitlines() if not line.startswith("#")]
    assert seeds
    assert set(seeds) <= _projects().keys()


def test_what_each_newest_release_requires_is_in_the_sample_or_listed_as_left_out() -> None:
    projects = _projects()
    missing: dict[str, str] = {}
    for name, project in projects.items():
        release = newest_release(project)
        if release is None:
            continue
        requirements = [r for f in release.files if f.metadata for r in f.metadata.requires_dist]
        for needed in requirement_names(requirements) - projects.keys() - _left_out():
            missing.setdefault(needed, name)
    assert missing == {}


def test_each_stored_metadata_document_is_there_under_its_own_hash() -> None:
    stored = {
        f.core_metadata_sha256
        for project in _projects().values()
        for release in project.releases
        for f in release.files
        if f.core_metadata_stored
    }
    for digest in stored:
        assert digest is not None
        document = (ROOT / core_metadata_path(digest)).read_bytes()
        assert hashlib.sha256(document).hexdigest() == digest
    kept = {path.stem for path in (ROOT / "core-metadata").glob("*/*/*.metadata")}
    assert kept == stored  # none missing, none that no file names
