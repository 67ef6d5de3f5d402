"""With worktree.py, the only module that imports pygit2: resolve refs, read, diff, commit."""

from __future__ import annotations

import fcntl
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

import pygit2
from pygit2.enums import ObjectType

from metasrv.errors import Conflict, InvalidInput, NotFound
from metasrv.repo import worktree
from metasrv.repo.objectfolders import make_object_folders
from metasrv.repo.paths import split_paths
from metasrv.repo.refwatch import RefWatch

CommitId = NewType("CommitId", str)
"""A full 40-hex commit id, produced only by ref resolution or by a commit."""

BlobId = NewType("BlobId", str)

MAX_REF_LENGTH = 255
_HEX_PREFIX = re.compile(r"[0-9a-f]{7,40}")
# Characters git forbids in ref names plus the rev-parse syntax we never want to evaluate.
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[/-]|/$|\.lock$|^\.|/\.")

# libgit2 caches only trees under 4 KiB by default; shard trees are larger and read per request.
pygit2.settings.cache_object_limit(ObjectType.TREE, 4 * 1024 * 1024)
pygit2.settings.cache_object_limit(ObjectType.COMMIT, 64 * 1024)
# Parsed trees cost about 1.7x what the budget counts: at 32 MB a server that had read 40,000 of
# 740,000 projects held 54 MB more than at 4 MB, and read them no faster (benchmarks/). What it
# holds after reading every project must stay under 300 MB.
pygit2.settings.cache_max_size(8 * 1024 * 1024)
# Pack files are read through mmap windows (1 GiB each, 8 GiB in all by default on 64-bit); every
# touched page counts in RSS, so reading all of a large repository once would map all of it.
pygit2.settings.mwindow_size = 16 * 1024 * 1024
pygit2.settings.mwindow_mapped_limit = 48 * 1024 * 1024

_DEFAULT_SIGNATURE = ("metasrv", "metasrv@localhost")


@dataclass(frozen=True, slots=True)
class Change:
    """One path that differs between two trees."""

    path: str
    status: str  # "added", "modified" or "deleted"
    old_blob: BlobId | None
    new_blob: BlobId | None


class Storage:
    """A git repository read by object, never through a working tree."""

    def __init__(self, path: Path | str) -> None:
        try:
            self._repo = pygit2.Repository(str(path))
        except pygit2.GitError:
            raise InvalidInput(f"{path} is not a git repository") from None
        self.path = Path(self._repo.path).resolve()
        self.data_branch: str | None = None  # pull-through's own branch, once it exists
        self._refs: RefWatch | None = None

    @classmethod
    def discover(cls, folder: Path) -> Storage:
        """Open the repository ``folder`` is inside of."""
        discovered = pygit2.discover_repository(str(folder))
        if discovered is None:
            raise InvalidInput(f"{folder} is not inside a git repository; pass --repo PATH")
        return cls(discovered)

    @classmethod
    def init(cls, path: Path, *, branch: str = "main") -> Storage:
        """Create an empty repository whose HEAD names ``branch``."""
        git_dir = pygit2.init_repository(str(path), initial_head=branch).path
        make_object_folders(Path(git_dir))
        return cls(path)

    def checkout_head(self) -> None:
        """Make the working tree and index match HEAD; only ``init`` uses a working tree."""
        self._repo.checkout_head(strategy=pygit2.enums.CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]

    @property
    def workdir(self) -> Path | None:
        """Return the working tree folder, or None for a bare repository."""
        workdir = self._repo.workdir
        return Path(workdir) if workdir else None

    def head_branch(self) -> str:
        """Return the branch HEAD points at, resolved now."""
        target = self._repo.references["HEAD"].target
        if not isinstance(target, str) or not target.startswith("refs/heads/"):
            raise NotFound("HEAD does not name a branch")
        return target.removeprefix("refs/heads/")

    def resolve(self, ref: str | None = None) -> CommitId:
        """Return the commit a sha, a branch or a tag names; None means HEAD's branch now."""
        if ref is None:
            if self._refs is not None:
                return CommitId(self._refs.served(self.data_branch, self._served))
            return self._served()[1]
        if len(ref) > MAX_REF_LENGTH:
            raise InvalidInput(f"ref is longer than {MAX_REF_LENGTH} characters")
        if _HEX_PREFIX.fullmatch(ref):
            commit_id = self._lookup_commit_prefix(ref)
            if commit_id is not None:
                return commit_id
        if (
            _REF_FORBIDDEN.search(ref)
            or not ref.isascii()
            or not pygit2.reference_is_valid_name(f"refs/heads/{ref}")
        ):
            raise InvalidInput(f"invalid ref {ref!r}: expected a commit sha, a branch or a tag")
        for full_name in (f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/remotes/{ref}"):
            reference = self._repo.references.get(full_name)
            if reference is not None:
                return CommitId(str(reference.peel(pygit2.Commit).id))
        raise NotFound(f"unknown ref {ref!r}")

    def watch_refs(self) -> None:
        """Keep the served commit until a ref file changes: what a server's every read resolves."""
        self._refs = RefWatch((self.path, self.path / "refs" / "heads"))

    def _served(self) -> tuple[str, CommitId]:
        branch = self.served_branch()
        return branch, self._branch_commit(branch)

    def served_branch(self) -> str:
        """Return the branch unpinned reads follow: the data branch once it exists, else HEAD's."""
        data_branch = self.data_branch
        return (
            data_branch if data_branch and self.branch_commit(data_branch) else self.head_branch()
        )

    def head_commit(self) -> CommitId:
        """Return the commit HEAD is at, attached to a branch or detached (as CI checks out)."""
        try:
            return CommitId(str(self._repo.head.target))
        except pygit2.GitError:
            raise NotFound("HEAD has no commit") from None

    def _branch_commit(self, branch: str) -> CommitId:
        reference = self._repo.references.get(f"refs/heads/{branch}")
        if reference is None:
            raise NotFound(f"branch {branch!r} has no commits")
        return CommitId(str(reference.target))

    def _lookup_commit_prefix(self, prefix: str) -> CommitId | None:
        try:
            obj = (
                self._repo.get(prefix)
                if len(prefix) == 40
                else self._repo.git_object_lookup_prefix(prefix)
            )
        except (ValueError, KeyError, pygit2.GitError):
            return None
        if obj is None or obj.type != ObjectType.COMMIT:
            return None
        return CommitId(str(obj.id))

    def branch_commit(self, branch: str) -> CommitId | None:
        """Return a branch's commit, or None when the branch does not exist."""
        reference = self._repo.references.get(f"refs/heads/{branch}")
        return None if reference is None else CommitId(str(reference.target))

    def commit_signature(self, commit_id: CommitId) -> tuple[bytes, bytes] | None:
        """Return a commit's signature and the bytes it signs, or None when it is unsigned."""
        signature, payload = self._commit(commit_id).gpg_signature
        return None if signature is None or payload is None else (signature, payload)

    def commit_time(self, commit_id: CommitId) -> int:
        """Return a commit's committer time, in seconds since the epoch."""
        return self._commit(commit_id).commit_time

    def merge_base(self, one: CommitId, other: CommitId) -> CommitId | None:
        """Return the best common ancestor of two commits, or None when they share none."""
        base = self._repo.merge_base(one, other)
        return None if base is None else CommitId(str(base))

    def first_parent(self, commit_id: CommitId) -> CommitId | None:
        """Return a commit's first parent, or None for a root commit."""
        parent_ids = self._commit(commit_id).parent_ids
        return CommitId(str(parent_ids[0])) if parent_ids else None

    def config_value(self, key: str) -> str | None:
        """Return a git configuration value as the repository sees it, or None when unset."""
        try:
            return str(self._repo.config[key])
        except (KeyError, pygit2.GitError):
            return None

    def blob_id(self, commit_id: CommitId, path: str) -> BlobId | None:
        """Return the id of the blob at ``path`` in a commit, or None when there is none."""
        try:
            entry = self._commit(commit_id).tree[path]
        except KeyError:
            return None
        return BlobId(str(entry.id)) if entry.type == ObjectType.BLOB else None

    def tree_id(self, commit_id: CommitId, path: str) -> str | None:
        """Return the id of the tree at ``path`` in a commit, or None when there is none."""
        tree = self._commit(commit_id).tree
        try:
            entry = tree[path] if path else tree
        except KeyError:
            return None
        return str(entry.id) if entry.type == ObjectType.TREE else None

    def read_blob(self, blob_id: BlobId) -> bytes:
        """Return a blob's bytes."""
        blob = self._repo[blob_id]
        assert isinstance(blob, pygit2.Blob)
        return bytes(blob.data)

    def read(self, commit_id: CommitId, path: str) -> bytes | None:
        """Return the bytes at ``path`` in a commit, or None when there is no file there."""
        blob_id = self.blob_id(commit_id, path)
        return None if blob_id is None else self.read_blob(blob_id)

    def walk_blobs(self, tree_id: str, prefix: str = "") -> Iterator[tuple[str, BlobId]]:
        """Yield (path, blob id) for every blob below a tree, depth first in git order."""
        for entry in self._tree(tree_id):
            path = f"{prefix}{entry.name}"
            if entry.type == ObjectType.TREE:
                yield from self.walk_blobs(str(entry.id), f"{path}/")
            elif entry.type == ObjectType.BLOB:
                yield path, BlobId(str(entry.id))

    def diff(self, old_commit: CommitId, new_commit: CommitId, under: str) -> list[Change]:
        """Return the blobs that differ below folder ``under`` between two commits."""
        old_tree = self.tree_id(old_commit, under)
        new_tree = self.tree_id(new_commit, under)
        if old_tree == new_tree:
            return []
        empty = str(self._repo.TreeBuilder().write())
        diff = self._tree(old_tree or empty).diff_to_tree(self._tree(new_tree or empty))
        zero = "0" * 40
        changes = []
        for delta in diff.deltas:
            old_id, new_id = str(delta.old_file.id), str(delta.new_file.id)
            status = "added" if old_id == zero else "deleted" if new_id == zero else "modified"
            changes.append(
                Change(
                    path=delta.new_file.path if new_id != zero else delta.old_file.path,
                    status=status,
                    old_blob=None if old_id == zero else BlobId(old_id),
                    new_blob=None if new_id == zero else BlobId(new_id),
                )
            )
        return changes

    def commit(
        self,
        branch: str,
        changes: Mapping[str, bytes | None],
        message: str,
        *,
        expected_parent: CommitId | None = None,
        start_point: CommitId | None = None,
        sign: Callable[[bytes], bytes] | None = None,
    ) -> CommitId | None:
        """Write ``changes`` (path -> bytes, or None to delete) as one commit on ``branch``.

        The changes are applied on the branch's head at the moment of writing, under a lock
        shared by every writer process: a branch another writer moved since the caller read it
        gets them re-applied on its new head, and a path both wrote ends with these bytes. Only
        with ``expected_parent`` does a moved branch raise Conflict instead. Only the trees on
        changed paths are rebuilt. Returns None when nothing changed. A new branch starts at
        ``start_point``. When ``branch`` is checked out, the changed paths of the working tree
        and index follow (see worktree.py), unless they hold edits of their own. ``sign`` turns
        the commit object's bytes into the signature stored in it.
        """
        return self.commit_computed(
            branch, lambda _: (changes, message), expected_parent, start_point, sign
        )

    def commit_computed(
        self,
        branch: str,
        compute: Callable[[CommitId | None], tuple[Mapping[str, bytes | None], str]],
        expected_parent: CommitId | None = None,
        start_point: CommitId | None = None,
        sign: Callable[[bytes], bytes] | None = None,
        *,
        merged: CommitId | None = None,
    ) -> CommitId | None:
        """Commit what ``compute(parent) -> (changes, message)`` makes, all under the lock.

        With ``merged`` the commit is a merge of that commit too, made even if the tree is the same.
        """
        with self._write_lock():
            worktree.recover(self._repo)
            parent = self.branch_commit(branch) or start_point
            if expected_parent is not None and parent != expected_parent:
                raise Conflict(f"branch {branch!r} moved while writing; try again")
            changes, message = compute(parent)
            base_tree = self._commit(parent).tree if parent is not None else None
            tree_id = self._write_tree(base_tree, split_paths(changes))
            if tree_id is None:
                tree_id = self._repo.TreeBuilder().write()
            if base_tree is not None and tree_id == base_tree.id and merged is None:
                return None
            signature = self._signature()
            parents: list[str | pygit2.Oid] = [p for p in (parent, merged) if p]
            if sign is None:
                commit_id = self._repo.create_commit(
                    None, signature, signature, message, tree_id, parents
                )
            else:
                # Git's commit signature covers the commit object as it would be without it.
                # pygit2's stubs say Oid; it returns the commit object's text.
                content = str(
                    self._repo.create_commit_string(signature, signature, message, tree_id, parents)
                )
                commit_id = self._repo.create_commit_with_signature(
                    content, sign(content.encode()).decode()
                )

            def move_ref() -> None:
                # Through libgit2's lockfile, so readers see the old commit or the new one.
                self._repo.references.create(f"refs/heads/{branch}", commit_id, force=True)

            if self.workdir is not None and parent is not None and self.head_branch() == branch:
                worktree.follow(
                    self._repo,
                    branch=branch,
                    old_commit=parent,
                    new_commit=str(commit_id),
                    paths=changes,
                    move_ref=move_ref,
                )
            else:
                move_ref()
            return CommitId(str(commit_id))

    def recover(self) -> None:
        """Finish a checkout step that a writer killed mid-commit left half done."""
        with self._write_lock():
            worktree.recover(self._repo)

    def _write_tree(
        self, base: pygit2.Tree | None, changes: dict[str, bytes | dict[str, object] | None]
    ) -> pygit2.Oid | None:
        builder = self._repo.TreeBuilder(base) if base is not None else self._repo.TreeBuilder()
        for name, change in changes.items():
            if isinstance(change, dict):
                existing = base[name] if base is not None and name in base else None
                subtree = existing if isinstance(existing, pygit2.Tree) else None
                subtree_id = self._write_tree(subtree, change)  # type: ignore[arg-type]
                if subtree_id is None:
                    if builder.get(name) is not None:
                        builder.remove(name)
                else:
                    builder.insert(name, subtree_id, pygit2.GIT_FILEMODE_TREE)
            elif change is None:
                if builder.get(name) is not None:
                    builder.remove(name)
            else:
                blob_id = self._repo.create_blob(change)
                builder.insert(name, blob_id, pygit2.GIT_FILEMODE_BLOB)
        if len(builder) == 0:
            return None
        return builder.write()

    def _commit(self, commit_id: str) -> pygit2.Commit:
        try:
            commit = self._repo[commit_id]
        except (KeyError, ValueError):
            # A commit id kept beside the repository (a saved listing, sync state) that gc or a
            # rewritten branch took away.
            raise NotFound(f"no commit {commit_id[:40]!r}") from None
        assert isinstance(commit, pygit2.Commit)
        return commit

    def _tree(self, tree_id: str) -> pygit2.Tree:
        tree = self._repo[tree_id]
        assert isinstance(tree, pygit2.Tree)
        return tree

    def _signature(self) -> pygit2.Signature:
        try:
            return self._repo.default_signature
        except (KeyError, pygit2.GitError):
            return pygit2.Signature(*_DEFAULT_SIGNATURE, int(time.time()), 0)

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        # One writer at a time per repository, across processes: read parent, write, move the ref.
        with open(self.path / "metasrv-write.lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
