"""What a whole-index sync keeps beside the repository: stored serials by commit, the root's ETag.

Both are derived from git and the source, so deleting them costs one slow sync, never data. The
serials follow the tree diff from the commit they were computed at, so their upkeep scales with
what changed, not with the 740,000 project files.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from packaging.utils import NormalizedName

from metasrv.errors import InvalidData, NotFound
from metasrv.model import MetadataStatus
from metasrv.names import name_from_path
from metasrv.repo.catalog import DATA_ROOT
from metasrv.repo.projectfile import source_serial
from metasrv.repo.storage import BlobId, CommitId, Storage

# Format 2 writes a failed fetch as a metadata-status; format 1 wrote it as a metadata-error.
_FETCH_FAILED_MARKERS = (f'"{MetadataStatus.FETCH_FAILED}"'.encode(), b'"fetch failed: ')
STATE_FOLDER = "metasrv-sync"


class SyncState:
    """Each mirrored project's source serial at a commit of one branch, and the root's ETag."""

    def __init__(self, storage: Storage, branch: str) -> None:
        self.storage = storage
        self.file = storage.path / STATE_FOLDER / f"{quote(branch, safe='')}.json"
        self._commit: str | None = None
        self._serials: dict[NormalizedName, int | None] = {}
        self._root: dict[str, str] = {}
        self._loaded = False

    def serials(self, commit_id: CommitId | None) -> dict[NormalizedName, int | None]:
        """Return normalized name -> stored source-serial at a commit; None: sync it regardless."""
        if commit_id is None:
            return {}
        self._load()
        if self._commit == commit_id:
            return self._serials
        if self._commit is None or not self._follow_diff(self._commit, commit_id):
            self._serials = self._walk(commit_id)
        self._commit = commit_id
        self._save()
        return self._serials

    def root_etag(self, source_url: str, commit_id: CommitId | None) -> str | None:
        """Return the root's ETag of the last complete sync, if the branch is still at it."""
        self._load()
        etag, done_at = self._root.get("etag"), self._root.get("commit")
        if etag is None or done_at is None or self._root.get("source") != source_url:
            return None
        # Any other commit since (a pull-through write, a reset) and the root is asked afresh.
        return etag if commit_id == done_at else None

    def record_root(self, source_url: str, etag: str | None, commit_id: CommitId | None) -> None:
        """Remember the root's ETag once every project it listed is mirrored at ``commit_id``."""
        self._load()
        if etag is None or commit_id is None:
            self._root = {}
        else:
            self._root = {"source": source_url, "etag": etag, "commit": commit_id}
        self._save()

    def _follow_diff(self, old_commit: str, commit_id: CommitId) -> bool:
        try:
            changes = self.storage.diff(CommitId(old_commit), commit_id, DATA_ROOT)
        except NotFound:
            return False  # the cached commit is gone (gc, a rewritten branch): walk again
        for change in changes:
            normalized_name = name_from_path(change.path)
            if normalized_name is None:
                continue
            if change.new_blob is None:
                self._serials.pop(normalized_name, None)
            else:
                self._serials[normalized_name] = self._serial(change.new_blob)
        return True

    def _walk(self, commit_id: CommitId) -> dict[NormalizedName, int | None]:
        tree_id = self.storage.tree_id(commit_id, DATA_ROOT)
        serials: dict[NormalizedName, int | None] = {}
        if tree_id is None:
            return serials
        for path, blob_id in self.storage.walk_blobs(tree_id):
            normalized_name = name_from_path(path)
            if normalized_name is not None:
                serials[normalized_name] = self._serial(blob_id)
        return serials

    def _serial(self, blob_id: BlobId) -> int | None:
        content = self.storage.read_blob(blob_id)
        if any(marker in content for marker in _FETCH_FAILED_MARKERS):
            return None  # files whose fetch failed are read again, though the serial is unchanged
        try:
            return source_serial(content, where=f"blob {blob_id}")
        except InvalidData:
            return None

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            document: Any = json.loads(self.file.read_bytes())
            commit, serials, root = document["commit"], document["serials"], document["root"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # absent or damaged: derived data, rebuilt from git
        if isinstance(commit, str) and isinstance(serials, dict) and isinstance(root, dict):
            self._commit, self._serials, self._root = commit, serials, root

    def _save(self) -> None:
        self.file.parent.mkdir(exist_ok=True)
        document = {"commit": self._commit, "serials": self._serials, "root": self._root}
        temporary = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document, separators=(",", ":")))
        temporary.replace(self.file)
