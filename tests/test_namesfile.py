"""The listing of every project is saved beside the repository, so a new process follows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasrv.names import normalize_name, project_path
from metasrv.repo.catalog import SAVE_AFTER_CHANGES, Catalog
from metasrv.repo.namesfile import load_names, names_file
from metasrv.repo.storage import CommitId, Storage
from tests.builders import commit_projects, make_project


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    """Return a repository with two projects, one registered as spelled differently."""
    storage = Storage.init(tmp_path / "meta")
    commit_projects(storage, make_project("Alpha_One", ["1.0"]), make_project("beta", ["1.0"]))
    return storage


def listing(storage: Storage, commit_id: CommitId) -> dict[str, str]:
    """Return what a new process lists at a commit."""
    names = Catalog(Storage(storage.path)).list_projects(commit_id)
    return {str(normalized): registered for normalized, registered in names.items()}


def test_a_listing_read_from_git_is_saved_with_its_commit(storage: Storage) -> None:
    head = storage.resolve(None)
    assert listing(storage, head) == {"alpha-one": "Alpha_One", "beta": "beta"}
    saved = {"alpha-one": "Alpha_One", "beta": "beta"}
    assert load_names(names_file(storage.path)) == (head, saved)


def test_a_new_process_follows_the_saved_listing_instead_of_reading_every_project(
    storage: Storage,
) -> None:
    listing(storage, storage.resolve(None))
    path = names_file(storage.path)
    # Only a listing read from the file can know this spelling: git never held it.
    path.write_text(path.read_text().replace("alpha-one Alpha_One", "alpha-one ALPHA.one"))
    commit_projects(storage, make_project("Gamma", ["1.0"]))
    beta = f"data/{project_path(normalize_name('beta'))}"
    storage.commit(storage.head_branch(), {beta: None}, "remove beta")
    head = storage.resolve(None)
    assert listing(storage, head) == {"alpha-one": "ALPHA.one", "gamma": "Gamma"}


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text.replace("end\n", ""),  # cut short at a line's end
        lambda text: text[:-2],  # cut short inside a line
        lambda text: "f" * 40 + text[40:],  # a commit this repository does not have
        lambda text: "not a commit\n" + text,
        lambda text: "\udcff",  # not UTF-8 once written with surrogateescape
    ],
)
def test_a_damaged_or_stale_saved_listing_is_read_from_git_again(
    storage: Storage, damage: object
) -> None:
    head = storage.resolve(None)
    listing(storage, head)
    path = names_file(storage.path)
    text = path.read_text().replace("alpha-one Alpha_One", "alpha-one Wrong")
    assert callable(damage)
    path.write_text(damage(text), errors="surrogateescape")
    assert listing(storage, head) == {"alpha-one": "Alpha_One", "beta": "beta"}


def test_the_saved_listing_moves_on_only_after_many_changes(storage: Storage) -> None:
    catalog = Catalog(storage)
    first = storage.resolve(None)
    catalog.list_projects(first)
    few = commit_projects(storage, make_project("one-more", ["1.0"]))
    catalog.list_projects(few)
    assert load_names(names_file(storage.path)) is not None
    assert load_names(names_file(storage.path))[0] == first  # type: ignore[index]
    many = commit_projects(
        storage, *(make_project(f"p{number}", ["1.0"]) for number in range(SAVE_AFTER_CHANGES))
    )
    names = catalog.list_projects(many)
    assert load_names(names_file(storage.path)) == (many, names)
    assert len(names) == SAVE_AFTER_CHANGES + 3


def test_names_the_file_cannot_hold_are_not_saved(storage: Storage) -> None:
    path = f"data/{project_path(normalize_name('beta'))}"
    content = storage.read(storage.resolve(None), path)
    assert content is not None
    storage.commit(storage.head_branch(), {path: content.replace(b'"beta"', b'"be ta"')}, "edit")
    assert listing(storage, storage.resolve(None))["beta"] == "be ta"
    assert load_names(names_file(storage.path)) is None
