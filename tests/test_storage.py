from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from metasrv.errors import Conflict, InvalidInput, NotFound
from metasrv.repo.storage import Storage
from tests.conftest import SIGNATURE


@pytest.fixture
def repo(tmp_path: Path) -> Storage:
    storage = Storage.init(tmp_path / "repo")
    storage.commit(
        "main", {"data/aa/00/a.toml": b"a", "data/bb/11/b.toml": b"b", "README.md": b"r"}, "one"
    )
    return storage


def test_a_commit_rebuilds_only_the_trees_on_changed_paths(repo: Storage) -> None:
    before = repo.resolve(None)
    after = repo.commit("main", {"data/aa/00/a.toml": b"a2"}, "two")
    assert after is not None
    assert repo.tree_id(before, "data/bb") == repo.tree_id(after, "data/bb")
    assert repo.tree_id(before, "data/aa") != repo.tree_id(after, "data/aa")
    assert repo.read(after, "data/aa/00/a.toml") == b"a2"
    assert repo.read(after, "README.md") == b"r"


def test_a_commit_that_changes_nothing_is_not_made(repo: Storage) -> None:
    head = repo.resolve(None)
    assert repo.commit("main", {"data/aa/00/a.toml": b"a"}, "same") is None
    assert repo.resolve(None) == head


def test_deleting_the_last_file_of_a_folder_removes_the_folder(repo: Storage) -> None:
    commit_id = repo.commit("main", {"data/bb/11/b.toml": None}, "delete")
    assert commit_id is not None
    assert repo.tree_id(commit_id, "data/bb") is None
    assert repo.read(commit_id, "data/aa/00/a.toml") == b"a"


def test_a_writer_that_lost_a_race_gets_a_conflict_and_writes_nothing(repo: Storage) -> None:
    stale = repo.resolve(None)
    repo.commit("main", {"x": b"1"}, "other writer")
    head = repo.resolve(None)
    with pytest.raises(Conflict):
        repo.commit("main", {"y": b"2"}, "late", expected_parent=stale)
    assert repo.resolve(None) == head


@pytest.mark.parametrize("path", ["../x", "data//x", "/abs", ".git/config", "a/./b"])
def test_writes_outside_the_tree_are_rejected(repo: Storage, path: str) -> None:
    with pytest.raises(InvalidInput):
        repo.commit("main", {path: b"x"}, "bad")


def test_refs_resolve_by_sha_short_sha_branch_and_tag(repo: Storage) -> None:
    first = repo.resolve(None)
    second = repo.commit("main", {"x": b"1"}, "two")
    assert second is not None
    raw = pygit2.Repository(str(repo.path))
    raw.references.create("refs/tags/v1", first)
    raw.create_tag(
        "v1-annotated", first, pygit2.enums.ObjectType.COMMIT, pygit2.Signature(*SIGNATURE), "m"
    )
    raw.references.create("refs/heads/feature/x", first)
    assert repo.resolve(first) == first
    assert repo.resolve(first[:8]) == first
    assert repo.resolve("main") == second
    assert repo.resolve("v1") == first
    assert repo.resolve("v1-annotated") == first
    assert repo.resolve("feature/x") == first


@pytest.mark.parametrize(
    "ref",
    ["HEAD~1", "main^", "main@{upstream}", "a..b", "x\x00y", "../etc", "-x", "a b", "x" * 300, "é"],
)
def test_rev_parse_expressions_and_malformed_refs_are_invalid(repo: Storage, ref: str) -> None:
    with pytest.raises(InvalidInput):
        repo.resolve(ref)


@pytest.mark.parametrize("ref", ["nope", "0" * 40, "deadbeef"])
def test_unknown_refs_are_not_found(repo: Storage, ref: str) -> None:
    with pytest.raises(NotFound):
        repo.resolve(ref)


def test_a_tree_id_is_not_mistaken_for_a_commit(repo: Storage) -> None:
    tree_id = repo.tree_id(repo.resolve(None), "data")
    assert tree_id is not None
    with pytest.raises(NotFound):
        repo.resolve(tree_id)


def test_diff_reports_added_modified_and_deleted_paths(repo: Storage) -> None:
    before = repo.resolve(None)
    after = repo.commit(
        "main",
        {"data/aa/00/a.toml": b"a2", "data/bb/11/b.toml": None, "data/cc/22/c.toml": b"c"},
        "m",
    )
    assert after is not None
    changes = {change.path: change.status for change in repo.diff(before, after, "data")}
    assert changes == {
        "aa/00/a.toml": "modified",
        "bb/11/b.toml": "deleted",
        "cc/22/c.toml": "added",
    }
    assert repo.diff(after, after, "data") == []
