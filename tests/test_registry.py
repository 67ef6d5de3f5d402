"""Registered understandings driven in-process: refreshes, what a read waits for, pins."""

from __future__ import annotations

import asyncio
import fcntl
import shutil
from pathlib import Path

import pytest
from packaging.utils import NormalizedName

from metasrv.errors import (
    InvalidData,
    InvalidInput,
    MetasrvError,
    NotAllowed,
    NotFound,
    Unavailable,
    Unverified,
)
from metasrv.repo import tomlcodec
from metasrv.repo.storage import CommitId, Storage
from metasrv.understandings.mirrors import Deadlines, clone, origin_url
from metasrv.understandings.registry import Understandings
from metasrv.understandings.rules import Registration, rule_path
from tests.builders import allow_repositories
from tests.deadlines import THREAD_DEADLINE_SECONDS
from tests.gitremotes import hung_remote
from tests.signing import git
from tests.test_signatures import SIGNERS_PATH, Signed, signed
from tests.test_understandings import CAP_WERKZEUG, RELAX_CLICK, embedded
from tests.test_understandings import register as register_at

__all__ = ["embedded", "signed"]  # the fixtures, shared with their own modules' tests


def register(meta: Storage, registration: Registration) -> CommitId:
    """Commit a registration to the meta repository; return the new commit."""
    path = f"understandings/{registration.name}.toml"
    commit_id = meta.commit("main", {path: tomlcodec.dumps(registration.to_toml())}, "register")
    assert commit_id is not None
    return commit_id


def mirrored(signed: Signed) -> Understandings:
    """Return the registrations of ``signed``'s meta repository with ``audit`` cloned."""
    understandings = Understandings(signed.meta, signed.mirrors)
    registration = understandings.get(signed.meta.resolve(None), "audit")
    job = understandings.refresh(registration)
    assert job is not None
    assert job.result(timeout=THREAD_DEADLINE_SECONDS) is None
    return understandings


def without_ssh_keygen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Take ssh-keygen away: from now on only verdicts reached before count."""
    nothing = tmp_path / "no-ssh-keygen"
    nothing.mkdir()
    monkeypatch.setenv("PATH", str(nothing))


def register_stable(signed: Signed) -> tuple[CommitId, CommitId, CommitId]:
    """Register ``stable``, signed like ``audit``, on a branch behind ``main``'s signed head.

    Return the branch's head, ``main``'s head and the meta commit that registers it.
    """
    stable = signed.commit(signed.alice, CAP_WERKZEUG)
    git(signed.repository, "branch", "stable")
    head = signed.commit(signed.alice, CAP_WERKZEUG, RELAX_CLICK)
    registration = Registration(
        "stable", "stable", str(signed.repository), "stable", "", allowed_signers=SIGNERS_PATH
    )
    return stable, head, register(signed.meta, registration)


def test_a_refresh_verifies_the_fetched_branch_so_that_reads_need_no_ssh_keygen(
    signed: Signed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stable, head, meta_commit = register_stable(signed)
    understandings = Understandings(signed.meta, signed.mirrors)
    jobs = understandings.refresh_all(meta_commit)
    assert [job.result(timeout=THREAD_DEADLINE_SECONDS) for job in jobs] == [None, None]
    assert [understandings.status[name].error for name in ("audit", "stable")] == [None, None]
    without_ssh_keygen(tmp_path, monkeypatch)
    for name, commit in (("audit", head), ("stable", stable)):
        assert understandings.head(understandings.get(meta_commit, name), meta_commit) == commit


@pytest.mark.parametrize(
    ("branch", "allowed_signers", "error"),
    [
        ("main", "understandings/missing.allowed_signers", InvalidData),
        ("gone", SIGNERS_PATH, NotFound),
        ("bad..branch", SIGNERS_PATH, InvalidInput),
    ],
    ids=["no-signers-file", "no-such-branch", "malformed-branch"],
)
def test_a_refresh_whose_verification_fails_succeeds_and_leaves_the_error_to_reads(
    signed: Signed, branch: str, allowed_signers: str, error: type[MetasrvError]
) -> None:
    signed.commit(signed.alice, CAP_WERKZEUG)
    registration = Registration(
        "odd", "odd", str(signed.repository), branch, "", allowed_signers=allowed_signers
    )
    meta_commit = register(signed.meta, registration)
    understandings = Understandings(signed.meta, signed.mirrors)
    job = understandings.refresh(understandings.get(meta_commit, "odd"))
    assert job is not None
    assert job.result(timeout=THREAD_DEADLINE_SECONDS) is None  # the mirror was fetched
    assert understandings.status["odd"].error is None
    with pytest.raises(error):
        understandings.pin(meta_commit, "odd")


@pytest.mark.parametrize(
    "repository", ["http://127.0.0.1:9/rules", "http://127.0.0.1:9/" + "r" * 300]
)
def test_a_registration_the_operator_does_not_allow_is_never_cloned_and_says_why(
    storage: Storage, tmp_path: Path, repository: str
) -> None:
    meta_commit = register(storage, Registration("far", "far", repository, "main", ""))
    understandings = Understandings(storage, tmp_path / "mirrors")
    assert understandings.refresh(understandings.get(meta_commit, "far")) is None
    # The registration's own text, cut short: nothing was read from the repository.
    assert understandings.status["far"].error == (
        f"understanding 'far': repository {repository[:200]!r} "
        "is not in metasrv.toml [understandings] allow"
    )
    assert not (tmp_path / "mirrors").exists()


def test_without_metasrv_toml_only_https_repositories_are_mirrored(tmp_path: Path) -> None:
    meta = Storage.init(tmp_path / "meta")
    register(meta, Registration("near", "near", "https://127.0.0.1:9/rules", "main", ""))
    meta_commit = register(meta, Registration("far", "far", "http://127.0.0.1:9/rules", "main", ""))
    understandings = Understandings(meta, tmp_path / "mirrors")
    understandings.check_allowed(understandings.get(meta_commit, "near"))
    with pytest.raises(NotAllowed):
        understandings.check_allowed(understandings.get(meta_commit, "far"))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (b"format = 1\n[understandings\n", "metasrv.toml:2: invalid TOML"),
        (b"format = 1\n[understandings]\nallow = 5\n", "metasrv.toml: "),
    ],
    ids=["malformed", "allow-not-a-list"],
)
def test_a_broken_metasrv_toml_is_named_when_a_mirror_is_checked_and_left_to_the_read(
    storage: Storage, tmp_path: Path, config: bytes, expected: str
) -> None:
    meta_commit = register(storage, Registration("far", "far", "https://127.0.0.1:9/r", "main", ""))
    storage.commit("main", {"metasrv.toml": config}, "break metasrv.toml")
    understandings = Understandings(storage, tmp_path / "mirrors")
    with pytest.raises(InvalidData) as caught:
        understandings.check_allowed(understandings.get(meta_commit, "far"))
    assert caught.value.message.startswith(expected)
    assert understandings.needed(meta_commit, "far") == []  # the read reports it, not this


def test_a_read_verifies_its_pins_before_it_is_served_so_serving_needs_no_ssh_keygen(
    signed: Signed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prepare`` runs every ssh-keygen a read needs off the event loop; ``pin`` finds verdicts."""
    old = signed.commit(signed.alice, CAP_WERKZEUG)
    middle = signed.commit(signed.alice, CAP_WERKZEUG, RELAX_CLICK)
    head = signed.commit(signed.alice, RELAX_CLICK)
    # A mirror an earlier run left: nothing of it was verified in this process.
    clone(str(signed.repository), signed.mirrors / "audit.git", Deadlines())
    understandings = Understandings(signed.meta, signed.mirrors)
    meta_commit = signed.meta.resolve(None)
    # The branch's head, then an older pin: each is verified, in the client's order.
    asyncio.run(understandings.prepare(meta_commit, f"audit,audit@{old}"))
    without_ssh_keygen(tmp_path, monkeypatch)
    assert [p.commit for p in understandings.pin(meta_commit, f"audit@{old}")] == [old]
    assert [p.commit for p in understandings.pin(meta_commit, "audit")] == [head]
    with pytest.raises(Unverified, match="cannot run ssh-keygen"):
        understandings.pin(meta_commit, f"audit@{middle}")  # not prepared: no verdict to find


def test_a_pin_by_full_sha_is_cached_forever_and_a_short_one_is_not(signed: Signed) -> None:
    head = signed.commit(signed.alice, CAP_WERKZEUG)
    client = signed.client()
    assert client.get("/v1/projects/flask/2.0.0?understanding=audit").status_code == 200
    at = signed.meta.resolve(None)
    pinned = f"/v1/projects/flask/2.0.0?at={at}&understanding=audit@"
    forever = client.get(pinned + head)
    assert forever.status_code == 200
    assert "immutable" in forever.headers["cache-control"]
    short = client.get(pinned + head[:12])
    assert short.status_code == 200
    assert "immutable" not in short.headers["cache-control"]


def test_pins_the_mirror_has_or_cannot_name_cost_no_fetch(signed: Signed) -> None:
    head = signed.commit(signed.alice, CAP_WERKZEUG)
    understandings = mirrored(signed)
    meta_commit = signed.meta.resolve(None)
    assert understandings.needed(meta_commit, f"audit@{head}") == []
    assert understandings.needed(meta_commit, "audit@bad..ref") == []
    # Names nobody registered are passed over, and the rest of the list still looked at.
    unseen = understandings.needed(meta_commit, "nobody,audit@" + "a" * 40)
    assert len(unseen) == 1  # a commit the mirror lacks may be on the remote: fetched
    assert unseen[0].result(timeout=THREAD_DEADLINE_SECONDS) is None


def test_a_pin_to_a_commit_nobody_has_is_a_not_found_that_names_it(signed: Signed) -> None:
    signed.commit(signed.alice, CAP_WERKZEUG)
    understandings = mirrored(signed)
    with pytest.raises(NotFound) as caught:
        understandings.pin(signed.meta.resolve(None), "audit@" + "a" * 40)
    assert caught.value.message == f"understanding 'audit' has no commit {'a' * 40!r}"


def test_each_understanding_is_served_at_the_head_of_its_own_branch(signed: Signed) -> None:
    stable = signed.commit(None, CAP_WERKZEUG)
    git(signed.repository, "branch", "stable")
    signed.commit(None, CAP_WERKZEUG, RELAX_CLICK)
    meta_commit = register(
        signed.meta, Registration("plain", "plain", str(signed.repository), "stable", "")
    )
    understandings = Understandings(signed.meta, signed.mirrors)
    registration = understandings.get(meta_commit, "plain")
    job = understandings.refresh(registration)
    assert job is not None
    assert job.result(timeout=THREAD_DEADLINE_SECONDS) is None
    assert understandings.head(registration, meta_commit) == stable


def test_a_branch_rewritten_unsigned_keeps_its_own_last_verified_head(signed: Signed) -> None:
    stable, head, meta_commit = register_stable(signed)
    understandings = Understandings(signed.meta, signed.mirrors)
    for job in understandings.refresh_all(meta_commit):
        assert job.result(timeout=THREAD_DEADLINE_SECONDS) is None
    stable_registration = understandings.get(meta_commit, "stable")
    audit = understandings.get(meta_commit, "audit")
    assert understandings.head(stable_registration, meta_commit) == stable
    assert understandings.head(audit, meta_commit) == head  # verified last
    unsigned = git(signed.repository, "commit-tree", f"{stable}^{{tree}}", "-m", "unsigned")
    git(signed.repository, "branch", "-f", "stable", unsigned.strip())
    refreshed = understandings.refresh(stable_registration)
    assert refreshed is not None
    assert refreshed.result(timeout=THREAD_DEADLINE_SECONDS) is None
    assert understandings.head(stable_registration, meta_commit) == stable


def test_a_mirror_whose_clone_failed_says_why_it_is_not_served(
    storage: Storage, tmp_path: Path
) -> None:
    allow_repositories(storage, str(tmp_path))
    missing = tmp_path / "missing"
    meta_commit = register(storage, Registration("gone", "gone", str(missing), "main", ""))
    understandings = Understandings(storage, tmp_path / "mirrors")
    registration = understandings.get(meta_commit, "gone")
    job = understandings.refresh(registration)
    assert job is not None
    assert job.result(timeout=THREAD_DEADLINE_SECONDS) is None
    error = understandings.status["gone"].error
    assert error is not None
    assert str(missing) in error
    with pytest.raises(Unavailable) as caught:
        understandings.storage_for(registration)
    assert caught.value.message == f"understanding 'gone' is not mirrored yet: {error}"


def test_a_read_waits_for_a_hung_clone_only_as_long_as_a_request_may(
    storage: Storage, tmp_path: Path
) -> None:
    deadlines = Deadlines(whole_seconds=30, read_seconds=30, request_wait_seconds=0.2)
    with hung_remote() as remote:
        allow_repositories(storage, "http://127.0.0.1:")
        meta_commit = register_at(storage, "hung", remote.url, "")
        understandings = Understandings(storage, tmp_path / "mirrors", deadlines=deadlines)
        asyncio.run(understandings.prepare(meta_commit, "hung"))
        assert understandings.mirrors.is_refreshing("hung")  # the clone goes on without it
        with pytest.raises(Unavailable, match="not mirrored yet"):
            understandings.pin(meta_commit, "hung")


def test_a_broken_rule_file_is_named_by_understanding_and_path(embedded: Storage) -> None:
    path = rule_path("understandings/pallets", NormalizedName("flask"))
    embedded.commit("main", {path: b'project = "Flask"\nrules = 5\n'}, "break the rules")
    understandings = Understandings(embedded)
    meta_commit = embedded.resolve(None)
    (pinned,) = understandings.pin(meta_commit, "pallets")
    with pytest.raises(InvalidData) as caught:
        understandings.layer(pinned, NormalizedName("flask"))
    assert caught.value.message.startswith(f"pallets:{path}")


def test_a_mirror_not_cloned_yet_or_cloned_from_elsewhere_is_not_served(
    signed: Signed, tmp_path: Path
) -> None:
    signed.commit(None, CAP_WERKZEUG)
    understandings = Understandings(signed.meta, signed.mirrors)
    registration = understandings.get(signed.meta.resolve(None), "audit")
    with pytest.raises(Unavailable) as caught:
        understandings.storage_for(registration)
    assert caught.value.message == "understanding 'audit' is not mirrored yet: being cloned"
    # The registration now names another repository than the one its mirror was cloned from.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(signed.repository, elsewhere)
    clone(str(elsewhere), signed.mirrors / "audit.git", Deadlines())
    with pytest.raises(Unavailable) as caught:
        Understandings(signed.meta, signed.mirrors).storage_for(registration)
    assert caught.value.message == (
        "understanding 'audit' moved to another repository, not mirrored yet: being cloned"
    )


@pytest.mark.parametrize(
    ("count", "error"), [(16, NotFound), (17, InvalidInput)], ids=["sixteen", "seventeen"]
)
def test_a_read_may_layer_sixteen_understandings_and_no_more(
    storage: Storage, count: int, error: type[MetasrvError]
) -> None:
    spec = ",".join(f"u{number}" for number in range(count))
    with pytest.raises(error):  # sixteen are looked up (and not found), seventeen refused
        Understandings(storage).pin(storage.resolve(None), spec)


def test_a_read_at_an_older_commit_refreshes_the_mirror_the_served_branch_registers(
    signed: Signed, tmp_path: Path
) -> None:
    signed.commit(None, CAP_WERKZEUG)
    gone = Registration("gone", "gone", str(signed.repository), "main", "")
    older = register(signed.meta, gone)
    moved = tmp_path / "moved"
    shutil.copytree(signed.repository, moved)
    audit = Registration("audit", "audited", str(moved), "main", "", allowed_signers=SIGNERS_PATH)
    register(signed.meta, audit)
    signed.meta.commit("main", {"understandings/gone.toml": None}, "unregister gone")
    understandings = Understandings(signed.meta, signed.mirrors)
    jobs = understandings.needed(older, "audit,gone")
    assert [job.result(timeout=THREAD_DEADLINE_SECONDS) for job in jobs] == [None, None]
    # audit moved since: its mirror follows the served branch; gone is left as it was.
    assert origin_url(signed.mirrors / "audit.git") == str(moved)
    assert origin_url(signed.mirrors / "gone.git") == str(signed.repository)


def test_an_invalid_list_is_quoted_in_its_error_cut_short(storage: Storage) -> None:
    spec = "u," * 60 + ","
    with pytest.raises(InvalidInput) as caught:
        Understandings(storage).pin(storage.resolve(None), spec)
    assert caught.value.message == (
        f"invalid understanding list {spec[:100]!r}: expected name[@commit],... (at most 16)"
    )


def test_mirrors_live_beside_the_meta_repositorys_git_data_unless_told(signed: Signed) -> None:
    signed.commit(signed.alice, CAP_WERKZEUG)
    understandings = Understandings(signed.meta)
    job = understandings.refresh(understandings.get(signed.meta.resolve(None), "audit"))
    assert job is not None
    assert job.result(timeout=THREAD_DEADLINE_SECONDS) is None
    assert (signed.meta.path / "metasrv-mirrors" / "audit.git").is_dir()


def test_a_meta_repository_without_understandings_registers_none(tmp_path: Path) -> None:
    meta = Storage.init(tmp_path / "meta")
    meta.commit("main", {"README.md": b"no understandings here\n"}, "start")
    understandings = Understandings(meta)
    assert understandings.registrations(meta.resolve(None)) == {}
    with pytest.raises(NotFound, match="unknown understanding 'pallets'"):
        understandings.pin(meta.resolve(None), "pallets")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (b"name = [\n", "understandings/reviews.toml:2: invalid TOML"),
        (b'name = "audit"\nrepository = 5\n', "understandings/reviews.toml: "),
        (
            tomlcodec.dumps(Registration("other", "x", ".", "main", "o").to_toml()),
            "understandings/reviews.toml: registers 'other', not 'reviews'",
        ),
    ],
    ids=["malformed", "wrong-type", "another-name"],
)
def test_a_broken_registration_is_named_by_its_path(
    storage: Storage, document: bytes, expected: str
) -> None:
    meta_commit = storage.commit("main", {"understandings/reviews.toml": document}, "break it")
    assert meta_commit is not None
    with pytest.raises(InvalidData) as caught:
        Understandings(storage).registrations(meta_commit)
    assert caught.value.message.startswith(expected)


def test_a_pin_to_an_unseen_commit_joins_a_refresh_in_flight_whatever_the_interval(
    signed: Signed,
) -> None:
    signed.commit(signed.alice, CAP_WERKZEUG)
    understandings = mirrored(signed)
    meta_commit = signed.meta.resolve(None)
    registration = understandings.get(meta_commit, "audit")
    (fetched,) = understandings.needed(meta_commit, "audit@" + "a" * 40)
    assert fetched.result(timeout=THREAD_DEADLINE_SECONDS) is None
    assert understandings.needed(meta_commit, "audit@" + "b" * 40) == []  # within the interval
    # Another process holds the mirror's lock: the next refresh waits for it, in flight.
    with open(signed.mirrors / ".audit.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        running = understandings.refresh(registration)
        assert running is not None
        assert understandings.needed(meta_commit, "audit@" + "b" * 40) == [running]
    assert running.result(timeout=THREAD_DEADLINE_SECONDS) is None
