"""The sync state beside a repository: stored serials that follow git, and the root's ETag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.utils import NormalizedName

from metasrv.index.syncstate import SyncState
from metasrv.names import project_path
from metasrv.repo.catalog import DATA_ROOT
from metasrv.repo.storage import CommitId, Storage

SOURCE = "https://pypi.example/simple/"
STATE_FOLDER = "metasrv-sync"  # README: kept beside the repository, in .git/metasrv-sync/


def project(name: str, serial: int | None, status: str | None = None) -> bytes:
    """Return a project file with a source serial and one file whose metadata has ``status``."""
    head = f'format = 2\nname = "{name}"\n'
    if serial is not None:
        head += f"source-serial = {serial}\n"
    release = '\n[releases."1.0"]\nfiles = []\n'
    if status is not None:
        release = (
            f'\n[[releases."1.0".files]]\nfilename = "{name}-1.0.tar.gz"\n'
            f'metadata-status = "{status}"\n'
        )
    return (head + release).encode()


def path(name: str) -> str:
    return f"{DATA_ROOT}/{project_path(NormalizedName(name))}"


def commit(storage: Storage, changes: dict[str, bytes | None], branch: str = "main") -> CommitId:
    commit_id = storage.commit(branch, changes, "sync")
    assert commit_id is not None
    return commit_id


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage.init(tmp_path / "meta")


def test_serials_are_read_from_the_project_files_at_a_commit(storage: Storage) -> None:
    head = commit(storage, {path("alpha"): project("alpha", 7), path("beta"): project("beta", 9)})
    assert SyncState(storage, "main").serials(head) == {"alpha": 7, "beta": 9}


def test_no_commit_has_no_serials(storage: Storage) -> None:
    assert SyncState(storage, "main").serials(None) == {}


def test_a_commit_without_a_data_folder_has_no_serials(storage: Storage) -> None:
    head = commit(storage, {"metasrv.toml": b""})
    assert SyncState(storage, "main").serials(head) == {}


def test_files_that_are_not_project_files_have_no_serial(storage: Storage) -> None:
    head = commit(
        storage,
        {
            f"{DATA_ROOT}/README.md": b"# data\n",
            f"{DATA_ROOT}/al/ph/Alpha.toml": project("Alpha", 3),  # not a normalized name
            path("alpha"): project("alpha", 7),
        },
    )
    assert SyncState(storage, "main").serials(head) == {"alpha": 7}


@pytest.mark.parametrize(
    "content",
    [
        project("alpha", 7, status="fetch-failed"),
        project("alpha", 7).replace(
            b"files = []", b'files = [{metadata-error = "fetch failed: 503"}]'
        ),
        project("alpha", None),
        b"source-serial = [not toml\n",
    ],
    ids=["fetch-failed", "format-1-fetch-failed", "no-serial", "garbled"],
)
def test_a_project_to_sync_regardless_has_no_stored_serial(
    storage: Storage, content: bytes
) -> None:
    head = commit(storage, {path("alpha"): content, path("beta"): project("beta", 9)})
    assert SyncState(storage, "main").serials(head) == {"alpha": None, "beta": 9}


def test_serials_follow_what_changed_between_commits(storage: Storage) -> None:
    first = commit(storage, {path("alpha"): project("alpha", 7), path("beta"): project("beta", 9)})
    state = SyncState(storage, "main")
    assert state.serials(first) == {"alpha": 7, "beta": 9}
    second = commit(
        storage,
        {
            f"{DATA_ROOT}/README.md": b"# data\n",  # sorts before every project path
            path("alpha"): project("alpha", 8),
            path("beta"): None,
            path("gamma"): project("gamma", 1, status="fetch-failed"),
        },
    )
    assert state.serials(second) == {"alpha": 8, "gamma": None}
    # A later reader of the state file finds the same, and back at the first commit, the first.
    assert SyncState(storage, "main").serials(second) == {"alpha": 8, "gamma": None}
    assert SyncState(storage, "main").serials(first) == {"alpha": 7, "beta": 9}


def test_the_state_is_kept_in_a_file_per_branch(storage: Storage) -> None:
    main = commit(storage, {path("alpha"): project("alpha", 7)})
    other = commit(storage, {path("alpha"): project("alpha", 8)}, branch="pulled/nightly")
    SyncState(storage, "main").serials(main)
    SyncState(storage, "pulled/nightly").serials(other)
    folder = storage.path / STATE_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == ["main.json", "pulled%2Fnightly.json"]
    stored = json.loads((folder / "pulled%2Fnightly.json").read_text())
    assert (stored["commit"], stored["serials"]) == (other, {"alpha": 8})
    assert SyncState(storage, "main").serials(main) == {"alpha": 7}


def test_stored_serials_are_used_without_reading_the_project_files(storage: Storage) -> None:
    # The state is trusted for the commit it names: that is what makes a sync of an unchanged
    # index cost no walk of its files. Shown by a state file that says otherwise.
    head = commit(storage, {path("alpha"): project("alpha", 7)})
    SyncState(storage, "main").serials(head)
    state_file = storage.path / STATE_FOLDER / "main.json"
    document = json.loads(state_file.read_text())
    document["serials"] = {"alpha": 70}
    state_file.write_text(json.dumps(document))
    assert SyncState(storage, "main").serials(head) == {"alpha": 70}


@pytest.mark.parametrize(
    "document",
    [
        {"commit": "0" * 40, "serials": {"alpha": 70}, "root": {}},  # a commit git no longer has
        {"commit": "not a commit", "serials": {"alpha": 70}, "root": {}},
        {"commit": 7, "serials": {"alpha": 70}, "root": {}},
        {"commit": None, "serials": {"alpha": 70}, "root": {}},
        {"commit": "x", "serials": [], "root": {}},
        {"commit": "x", "serials": {}, "root": []},
        {"commit": "x", "serials": {}},
        [],
        "garbled",
    ],
)
def test_a_damaged_or_stale_state_file_is_rebuilt_from_git(
    storage: Storage, document: object
) -> None:
    head = commit(storage, {path("alpha"): project("alpha", 7)})
    folder = storage.path / STATE_FOLDER
    folder.mkdir()
    text = document if isinstance(document, str) else json.dumps(document)
    (folder / "main.json").write_text(text)
    state = SyncState(storage, "main")
    assert state.root_etag(SOURCE, head) is None
    assert state.serials(head) == {"alpha": 7}
    assert SyncState(storage, "main").serials(head) == {"alpha": 7}


def test_the_roots_etag_holds_only_for_its_source_and_commit(storage: Storage) -> None:
    head = commit(storage, {path("alpha"): project("alpha", 7)})
    recorder = SyncState(storage, "main")
    recorder.serials(head)  # a sync records the root after reading the serials
    recorder.record_root(SOURCE, '"etag-1"', head)
    state = SyncState(storage, "main")  # as the next sync reads it
    assert state.root_etag(SOURCE, head) == '"etag-1"'
    assert state.root_etag("https://other.example/simple/", head) is None
    assert state.root_etag(SOURCE, None) is None
    later = commit(storage, {path("alpha"): project("alpha", 8)})
    assert state.root_etag(SOURCE, later) is None


@pytest.mark.parametrize("forget", ["etag", "commit"])
def test_a_root_recorded_without_etag_or_commit_forgets_the_last_one(
    storage: Storage, forget: str
) -> None:
    head = commit(storage, {path("alpha"): project("alpha", 7)})
    state = SyncState(storage, "main")
    state.serials(head)
    state.record_root(SOURCE, '"etag-1"', head)
    state.record_root(
        SOURCE, None if forget == "etag" else '"etag-2"', None if forget == "commit" else head
    )
    assert state.root_etag(SOURCE, head) is None
    assert SyncState(storage, "main").root_etag(SOURCE, head) is None


@pytest.mark.parametrize("missing", ["source", "etag", "commit"])
def test_a_stored_root_missing_a_field_gives_no_etag(storage: Storage, missing: str) -> None:
    head = commit(storage, {path("alpha"): project("alpha", 7)})
    root = {"source": SOURCE, "etag": '"etag-1"', "commit": head}
    del root[missing]
    folder = storage.path / STATE_FOLDER
    folder.mkdir()
    document = {"commit": head, "serials": {"alpha": 7}, "root": root}
    (folder / "main.json").write_text(json.dumps(document))
    assert SyncState(storage, "main").root_etag(SOURCE, head) is None


def test_serials_and_the_roots_etag_are_kept_together(storage: Storage) -> None:
    head = commit(storage, {path("alpha"): project("alpha", 7)})
    state = SyncState(storage, "main")
    state.serials(head)
    state.record_root(SOURCE, '"etag-1"', head)
    later = commit(storage, {path("beta"): project("beta", 9)})
    assert state.serials(later) == {"alpha": 7, "beta": 9}
    state.record_root(SOURCE, '"etag-2"', later)
    again = SyncState(storage, "main")
    assert again.serials(later) == {"alpha": 7, "beta": 9}
    assert again.root_etag(SOURCE, later) == '"etag-2"'


def test_a_new_commit_updates_only_the_changed_projects_serials(storage: Storage) -> None:
    # Upkeep scales with the diff, not with the 740,000 files: the projects a commit did not touch
    # keep what the state says, shown by a state file that says otherwise for alpha.
    first = commit(storage, {path("alpha"): project("alpha", 7), path("beta"): project("beta", 9)})
    SyncState(storage, "main").serials(first)
    state_file = storage.path / STATE_FOLDER / "main.json"
    document = json.loads(state_file.read_text())
    document["serials"]["alpha"] = 70
    state_file.write_text(json.dumps(document))
    second = commit(storage, {path("beta"): project("beta", 10)})
    assert SyncState(storage, "main").serials(second) == {"alpha": 70, "beta": 10}
