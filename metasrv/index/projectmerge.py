"""Pull-through's changes to one project, made against whatever head they are committed on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace

from packaging.version import Version

from metasrv.errors import InvalidInput
from metasrv.index import archives
from metasrv.index.pagefiles import declared_sha256, listed_file
from metasrv.index.pages import ProjectPage
from metasrv.model import DistFile, MetadataStatus, Project, Release
from metasrv.names import normalize_name

Merge = Callable[[Project | None], Project | None]
"""A change to one project: the project at the head (None: absent) -> the project to write."""


def pending_files(page: ProjectPage, known: Mapping[str, DistFile]) -> list[DistFile]:
    """Return a page's files, with metadata already known for unchanged files, else pending."""
    files = []
    for source_file in page.files:
        if archives.version_of_filename(source_file.filename) is None:
            continue
        dist_file = listed_file(
            source_file,
            MetadataStatus.PENDING,
            # Served to clients as the hash of the source's own document until sync reads it.
            declared_sha256(source_file),
        )
        files.append(_with_known_metadata(dist_file, known.get(dist_file.filename)))
    return files


def _with_known_metadata(dist_file: DistFile, known: DistFile | None) -> DistFile:
    if (
        known is None
        or known.metadata_pending
        or not dist_file.hashes
        or dict(known.hashes) != dict(dist_file.hashes)
    ):
        return dist_file
    return replace(
        dist_file,
        metadata=known.metadata,
        metadata_status=known.metadata_status,
        metadata_reason=known.metadata_reason,
        metadata_built_on=known.metadata_built_on,
        core_metadata_sha256=known.core_metadata_sha256,
        core_metadata_stored=known.core_metadata_stored,
        size=dist_file.size if dist_file.size is not None else known.size,
    )


def _rebuild(project: Project, replace_file: Callable[[DistFile], DistFile]) -> Project:
    releases = [
        Release.from_files(release.version_text, tuple(replace_file(f) for f in release.files))
        if release.files
        else release
        for release in project.releases
    ]
    return Project.create(project.name, releases, project.source_state)


def adopt(incoming: Project) -> Merge:
    """Return a merge that takes ``incoming``'s files, keeping metadata read meanwhile."""

    def merge(current: Project | None) -> Project | None:
        if current is None:
            return incoming
        known = {f.filename: f for r in current.releases for f in r.files}
        return _rebuild(
            incoming,
            lambda f: _with_known_metadata(f, known.get(f.filename)) if f.metadata_pending else f,
        )

    return merge


def fill(read: Mapping[str, DistFile], name: str | None = None) -> Merge:
    """Return a merge that gives pending files of the head the metadata read for them."""

    def merge(current: Project | None) -> Project | None:
        if current is None:
            return None  # removed meanwhile: nothing to fill
        filled = _rebuild(
            current,
            lambda f: _with_known_metadata(f, read.get(f.filename)) if f.metadata_pending else f,
        )
        if name is not None and current.name == current.normalized_name and _spells(name, current):
            # A JSON page names the project normalized; METADATA spells it as registered.
            return replace(filled, name=name)
        return filled

    return merge


def _spells(name: str, project: Project) -> bool:
    try:
        return normalize_name(name) == project.normalized_name
    except InvalidInput:
        return False


def pending_of(project: Project, version: Version | None = None) -> list[Release]:
    """Return the releases (or the one release) that still have pending files, newest first."""
    releases = [
        release
        for release in reversed(project.releases)
        if any(f.metadata_pending for f in release.files)
    ]
    if version is None:
        return releases
    return [r for r in releases if r.version == version]


def batches(releases: list[Release], files: int) -> Iterator[list[Release]]:
    """Yield runs of consecutive releases holding about ``files`` files each."""
    batch: list[Release] = []
    count = 0
    for release in releases:
        batch.append(release)
        count += len(release.files)
        if count >= files:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch
