"""Queries of the canonical data at one pinned commit, cached by git object id."""

from __future__ import annotations

from dataclasses import dataclass

import pygit2
from packaging.utils import NormalizedName
from packaging.version import Version

from metasrv.config import MetaConfig
from metasrv.errors import NotFound, UnknownProject
from metasrv.lru import WeighedCache
from metasrv.model import Project, Release
from metasrv.names import name_from_path, normalize_name, project_path
from metasrv.repo import tomlcodec
from metasrv.repo.namesfile import load_names, names_file, save_names
from metasrv.repo.projectfile import read_project, read_release, registered_name
from metasrv.repo.storage import BlobId, CommitId, Storage

DATA_ROOT = "data"
CONFIG_PATH = "metasrv.toml"
# Parsed projects kept, by count and by files: a parsed file is ~1 KB of objects, and numpy's
# 4,400 files made a count-bounded cache grow 5 MB a large project. Encoded bodies are cached
# separately, by bytes.
PARSED_PROJECT_CACHE_SIZE = 256
PARSED_PROJECT_CACHE_FILES = 50_000
# The saved listing is rewritten once a new process would otherwise follow this many changes.
SAVE_AFTER_CHANGES = 1_000


@dataclass(frozen=True, slots=True)
class ProjectChange:
    """A project added, changed or removed between two commits."""

    normalized_name: NormalizedName
    name: str
    change: str  # "added", "changed" or "removed"


@dataclass(frozen=True, slots=True)
class _Listing:
    commit_id: CommitId
    names: dict[NormalizedName, str]


class Catalog:
    """The projects of a meta repository, read at whichever commit a caller pins."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._listing: _Listing | None = None
        self._unsaved_changes = 0  # projects changed since the saved listing's commit
        self._parsed: WeighedCache[BlobId, Project] = WeighedCache(
            PARSED_PROJECT_CACHE_FILES, _weight, max_entries=PARSED_PROJECT_CACHE_SIZE
        )

    def config(self, commit_id: CommitId) -> MetaConfig:
        """Return the meta repository's ``metasrv.toml`` at a commit (empty when it has none)."""
        content = self.storage.read(commit_id, CONFIG_PATH)
        if content is None:
            return MetaConfig()
        return MetaConfig.from_toml(tomlcodec.loads(content, where=CONFIG_PATH), CONFIG_PATH)

    def data_tree(self, commit_id: CommitId) -> str:
        """Return the id of the ``data/`` tree at a commit ("" when there is none): what every
        whole-index answer depends on, so commits that change other folders share them."""
        return self.storage.tree_id(commit_id, DATA_ROOT) or ""

    def project_blob(self, commit_id: CommitId, name: str) -> tuple[NormalizedName, BlobId]:
        """Return the normalized name and blob id of a project's file at a commit."""
        normalized_name = normalize_name(name)
        blob_id = self.storage.blob_id(commit_id, f"{DATA_ROOT}/{project_path(normalized_name)}")
        if blob_id is None:
            raise UnknownProject(f"unknown project {name!r}")
        return normalized_name, blob_id

    def get_project(self, commit_id: CommitId, name: str) -> Project:
        """Return a project as it is at a commit."""
        normalized_name, blob_id = self.project_blob(commit_id, name)
        return self.parse_project(blob_id, normalized_name)

    def parse_project(self, blob_id: BlobId, normalized_name: NormalizedName) -> Project:
        """Return the project a blob holds, parsed once per blob id."""
        project = self._parsed.get(blob_id)
        if project is None:
            where = f"{DATA_ROOT}/{project_path(normalized_name)}"
            project = read_project(self.storage.read_blob(blob_id), where)
            self._parsed.put(blob_id, project)
        return project

    def remember(self, blob_id: BlobId, project: Project) -> None:
        """Keep ``project`` as the parse of the project file ``blob_id``, which its writer made.

        Parsing a large project file (numpy's, ~1 MB) costs far more than the commit that wrote
        it: a pull-through hands the project it wrote to the reader that will serve it.
        """
        self._parsed.put(blob_id, project)

    def read_release(
        self, blob_id: BlobId, normalized_name: NormalizedName, version: Version
    ) -> tuple[str, Release | None]:
        """Return a project's registered name and its release PEP 440 equal to ``version``."""
        where = f"{DATA_ROOT}/{project_path(normalized_name)}"
        return read_release(self.storage.read_blob(blob_id), where, version)

    def _read_name(self, blob_id: BlobId) -> str:
        return registered_name(self.storage.read_blob(blob_id), where=f"blob {blob_id}")

    def list_projects(self, commit_id: CommitId) -> dict[NormalizedName, str]:
        """Return every project at a commit: normalized name -> registered name, sorted."""
        listing = self._listing
        if listing is not None and listing.commit_id == commit_id:
            return listing.names
        if listing is None:
            saved = load_names(names_file(self.storage.path))
            listing = None if saved is None else _Listing(*saved)
        names = None if listing is None else self._follow(listing, commit_id)
        if names is None:
            names = self._walk_names(commit_id)
            self._unsaved_changes = SAVE_AFTER_CHANGES
        self._listing = _Listing(commit_id, names)
        if self._unsaved_changes >= SAVE_AFTER_CHANGES:
            save_names(names_file(self.storage.path), commit_id, names)
            self._unsaved_changes = 0
        return names

    def _follow(self, listing: _Listing, commit_id: CommitId) -> dict[NormalizedName, str] | None:
        """Return a listing moved to ``commit_id`` along the tree diff: work scales with what
        changed. None when its commit is gone (gc, a rewritten branch)."""
        try:
            changes = self.changed_since(listing.commit_id, commit_id)
        except NotFound:
            return None
        names = dict(listing.names)
        for change in changes:
            if change.change == "removed":
                names.pop(change.normalized_name, None)
            else:
                names[change.normalized_name] = change.name
        self._unsaved_changes += len(changes)
        return dict(sorted(names.items()))

    def _walk_names(self, commit_id: CommitId) -> dict[NormalizedName, str]:
        tree_id = self.storage.tree_id(commit_id, DATA_ROOT)
        names: dict[NormalizedName, str] = {}
        if tree_id is None:
            return names
        for path, blob_id in self.storage.walk_blobs(tree_id):
            normalized_name = name_from_path(path)
            if normalized_name is not None:
                names[normalized_name] = self._read_name(blob_id)
        return dict(sorted(names.items()))

    def changed_since(self, since: CommitId, commit_id: CommitId) -> list[ProjectChange]:
        """Return the projects added, changed or removed from ``since`` to ``commit_id``."""
        changes = []
        for change in self.storage.diff(since, commit_id, DATA_ROOT):
            normalized_name = name_from_path(change.path)
            if normalized_name is None:
                continue
            if change.new_blob is None:
                assert change.old_blob is not None
                name, kind = self._read_name(change.old_blob), "removed"
            else:
                name = self._read_name(change.new_blob)
                kind = "added" if change.old_blob is None else "changed"
            changes.append(ProjectChange(normalized_name, name, kind))
        return sorted(changes, key=lambda change: change.normalized_name)


def blob_id_of(content: bytes) -> BlobId:
    """Return the id git gives a blob of ``content``, without writing it."""
    return BlobId(str(pygit2.hash(content)))


def _weight(_: BlobId, project: Project) -> int:
    """Return what a parsed project weighs in the cache: its files, and one for the rest."""
    return 1 + sum(len(release.files) for release in project.releases)
