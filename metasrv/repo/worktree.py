"""Keep a checked-out branch's index and working tree in step with commits made from objects.

A commit moves two things git cannot move together: the branch ref and the checkout (index and
working tree). A journal in the git folder names both commits while they differ, and the checkout
moves *before* the ref, so a ``kill -9`` at any moment leaves either the old checkout or a new one
under the old ref (an operator's ``git commit`` then commits the new data: it never deletes
committed data), and the next writer finishes or undoes the step from the journal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pygit2
from pygit2.enums import ObjectType

JOURNAL_NAME = "metasrv-checkout"
_TEMPORARY_SUFFIX = ".metasrv-tmp"


def follow(
    repo: pygit2.Repository,
    *,
    branch: str,
    old_commit: str,
    new_commit: str,
    paths: Iterable[str] | Mapping[str, bytes | None],
    move_ref: Callable[[], None],
) -> None:
    """Move ``paths`` of the checkout from ``old_commit`` to ``new_commit``, then the ref.

    ``paths`` mapped to the new commit's bytes there (None: removed) are written from those,
    not read back from the object store (numpy's file: 1 MB inflated and hashed again).
    """
    journal = Path(repo.path) / JOURNAL_NAME
    temporary = journal.with_name(JOURNAL_NAME + _TEMPORARY_SUFFIX)
    temporary.write_text(f"{branch}\n{old_commit}\n{new_commit}\n")
    temporary.replace(journal)
    contents = paths if isinstance(paths, Mapping) else None
    paths = list(paths)
    _bring(repo, paths, old_commit, new_commit, new_commit, target_contents=contents)
    try:
        move_ref()
    except BaseException:
        _bring(repo, paths, old_commit, new_commit, old_commit)
        journal.unlink()
        raise
    journal.unlink()


def recover(repo: pygit2.Repository) -> None:
    """Finish or undo a checkout step a killed writer left in its journal."""
    journal = Path(repo.path) / JOURNAL_NAME
    try:
        branch, old_commit, new_commit = journal.read_text().split()
    except (FileNotFoundError, ValueError):
        journal.unlink(missing_ok=True)
        return
    # The dead writer held the write lock: lock files it left are stale and would make every
    # later ref or index update fail.
    for stale in (f"refs/heads/{branch}.lock", "index.lock"):
        (Path(repo.path) / stale).unlink(missing_ok=True)
    reference = repo.references.get(f"refs/heads/{branch}")
    head = str(reference.target) if reference is not None else None
    if head in (old_commit, new_commit) and repo.workdir:
        old_tree = _commit(repo, old_commit).tree
        new_tree = _commit(repo, new_commit).tree
        paths = [delta.new_file.path for delta in old_tree.diff_to_tree(new_tree).deltas]
        _bring(repo, paths, old_commit, new_commit, head)
    # A head that is neither was moved by someone else since, with a checkout of their own.
    journal.unlink()


def _bring(
    repo: pygit2.Repository,
    paths: list[str],
    old_commit: str,
    new_commit: str,
    target: str,
    *,
    target_contents: Mapping[str, bytes | None] | None = None,
) -> None:
    """Set each path's index entry and file to ``target``'s, unless it holds other edits.

    A file whose bytes are neither the old nor the new commit's holds the user's edits and is
    left alone, as ``git checkout`` would. ``target_contents``: ``target``'s bytes, where known.
    """
    workdir = Path(repo.workdir)
    old_tree, new_tree = _commit(repo, old_commit).tree, _commit(repo, new_commit).tree
    target_tree = new_tree if target == new_commit else old_tree
    index = repo.index
    # Parsed again only when the file changed since this repository last read or wrote it:
    # at 50,000 projects the index is 4 MB, and parsing it took half of each commit's 80 ms.
    index.read(False)
    for path in paths:
        file_path = workdir / path
        temporary = file_path.with_name(f".{file_path.name}{_TEMPORARY_SUFFIX}")
        temporary.unlink(missing_ok=True)
        current = file_path.read_bytes() if file_path.is_file() else None
        current_id = str(pygit2.hash(current)) if current is not None else None
        if current_id not in (_blob_id(old_tree, path), _blob_id(new_tree, path)):
            continue
        target_id = _blob_id(target_tree, path)
        if target_id is None:
            file_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                index.remove(path)
            continue
        if current_id != target_id:
            content = target_contents.get(path) if target_contents is not None else None
            if content is None:
                blob = repo[target_id]
                assert isinstance(blob, pygit2.Blob)
                content = blob.data
            file_path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(content)
            temporary.replace(file_path)
        index.add(pygit2.IndexEntry(path, pygit2.Oid(hex=target_id), pygit2.enums.FileMode.BLOB))
    index.write()


def _blob_id(tree: pygit2.Tree, path: str) -> str | None:
    try:
        entry = tree[path]
    except KeyError:
        return None
    return str(entry.id) if entry.type == ObjectType.BLOB else None


def _commit(repo: pygit2.Repository, commit_id: str) -> pygit2.Commit:
    commit = repo[commit_id]
    assert isinstance(commit, pygit2.Commit)
    return commit
