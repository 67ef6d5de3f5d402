"""Commit signatures checked directly: which commits verify, how far back, signing with a key."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from metasrv.errors import InvalidInput
from metasrv.repo.storage import CommitId, Storage
from metasrv.understandings.signatures import (
    SshSigner,
    newest_verified,
    signing_key,
    unverified_commits,
    verify_commit,
)
from tests.signing import DEADLINE_SECONDS, allowed_signers_line, git, make_key

# understandings/README.md: the newest commit whose signature verifies, at most 100 commits back.
SEARCH_LIMIT = 100
PGP_SIGNATURE = b"-----BEGIN PGP SIGNATURE-----\n\nwsBcBAABCAAQBQJ\n-----END PGP SIGNATURE-----\n"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "repository"
    folder.mkdir()
    git(folder, "init", "-q", "-b", "main")
    return folder


def commit_at(repository: Path, key: Path | None, when: str, content: str = "x") -> CommitId:
    """Commit one file with the git CLI, dated ``when``, signed with ``key`` when given."""
    (repository / "file").write_text(content)
    git(repository, "add", "--all")
    signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"] if key else []
    environment = {**os.environ, "GIT_COMMITTER_DATE": when, "GIT_AUTHOR_DATE": when}
    subprocess.run(
        ["git", "-C", str(repository), *signing, "commit", "-q", "--allow-empty", "-m", "c"]
        + (["-S"] if key else []),
        check=True,
        capture_output=True,
        env=environment,
        timeout=DEADLINE_SECONDS,
    )
    return CommitId(git(repository, "rev-parse", "HEAD"))


def unsigned_commits(storage: Storage, count: int) -> list[CommitId]:
    """Commit ``count`` unsigned commits on main; return them oldest first."""
    commits = []
    for number in range(count):
        commit_id = storage.commit("main", {"file": str(number).encode()}, f"unsigned {number}")
        assert commit_id is not None
        commits.append(commit_id)
    return commits


def test_a_commit_signed_by_an_allowed_signer_verifies_for_that_principal(
    tmp_path: Path, repository: Path
) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    head = commit_at(repository, alice, "2024-05-01T12:00:00Z")
    verdict = verify_commit(
        Storage(repository), head, allowed_signers_line("alice@example.org", alice)
    )
    assert (verdict.commit, verdict.signer, verdict.reason) == (head, "alice@example.org", None)
    assert verdict.verified


def test_the_first_principal_listed_for_a_key_is_the_signer(
    tmp_path: Path, repository: Path
) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    head = commit_at(repository, alice, "2024-05-01T12:00:00Z")
    signers = allowed_signers_line("alice@example.org", alice) + allowed_signers_line(
        "auditors@example.org", alice
    )
    assert verify_commit(Storage(repository), head, signers).signer == "alice@example.org"


def test_a_commit_signed_with_gpg_is_refused_as_not_ssh(tmp_path: Path) -> None:
    storage = Storage.init(tmp_path / "meta")
    head = storage.commit("main", {"file": b"x"}, "gpg", sign=lambda _: PGP_SIGNATURE)
    assert head is not None
    alice = make_key(tmp_path / "keys", "alice")
    verdict = verify_commit(storage, head, allowed_signers_line("alice@example.org", alice))
    assert verdict.commit == head
    assert (verdict.signer, verdict.reason) == (None, "the commit is not signed with an SSH key")
    assert not verdict.verified


def test_a_signature_made_outside_gits_namespace_does_not_verify(tmp_path: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    storage = Storage.init(tmp_path / "meta")

    def sign_as_file(content: bytes) -> bytes:
        signed = subprocess.run(
            ["ssh-keygen", "-Y", "sign", "-f", str(alice), "-n", "file"],
            input=content,
            capture_output=True,
            check=True,
            timeout=DEADLINE_SECONDS,
        )
        return signed.stdout

    head = storage.commit("main", {"file": b"x"}, "signed for files", sign=sign_as_file)
    assert head is not None
    # The allowed-signers line lists no namespaces, so only the namespace of the request counts.
    public = alice.with_name("alice.pub").read_text().split()
    signers = f"alice@example.org {public[0]} {public[1]}\n".encode()
    verdict = verify_commit(storage, head, signers)
    assert verdict.signer is None
    assert verdict.reason is not None
    assert verdict.reason.startswith("the signature does not verify: ")


def test_a_refused_signature_gives_ssh_keygens_first_line_only(tmp_path: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    storage = Storage.init(tmp_path / "meta")
    sign = SshSigner(str(alice))
    head = storage.commit(
        "main", {"file": b"x"}, "rules", sign=lambda content: sign(content + b"other")
    )
    assert head is not None
    verdict = verify_commit(storage, head, allowed_signers_line("alice@example.org", alice))
    # ssh-keygen says two lines; the second ("Could not verify signature.") adds nothing.
    assert verdict.reason == (
        "the signature does not verify: Signature verification failed: incorrect signature"
    )


@pytest.mark.parametrize(
    ("committed", "verified"),
    [("2019-06-01T00:00:00Z", True), ("2021-06-01T00:00:00Z", False)],
)
def test_a_keys_validity_is_judged_at_commit_time(
    tmp_path: Path, repository: Path, committed: str, verified: bool
) -> None:
    # Alice's key stopped being valid at the start of 2020: what she signed before still verifies.
    alice = make_key(tmp_path / "keys", "alice")
    public = alice.with_name("alice.pub").read_text().split()
    signers = (
        f'alice@example.org namespaces="git",valid-before="20200101" {public[0]} {public[1]}\n'
    ).encode()
    head = commit_at(repository, alice, committed)
    verdict = verify_commit(Storage(repository), head, signers)
    assert verdict.verified is verified
    if not verified:
        assert verdict.reason == "signed by a key that is not an allowed signer"


def test_a_verified_commit_further_back_than_the_search_limit_is_not_found(
    tmp_path: Path, repository: Path
) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    signed = commit_at(repository, alice, "2024-05-01T12:00:00Z")
    storage = Storage(repository)
    unsigned = unsigned_commits(storage, SEARCH_LIMIT)
    signers = allowed_signers_line("alice@example.org", alice)
    found = newest_verified(storage, unsigned[-1], signers)
    assert found.commit is None
    assert [verdict.commit for verdict in found.refused] == unsigned[::-1]
    # One unverified commit fewer, and the signed one is found.
    found = newest_verified(storage, unsigned[-2], signers)
    assert found.commit == signed
    assert len(found.refused) == SEARCH_LIMIT - 1


def test_a_branch_with_no_verified_commit_refuses_each_down_to_its_root(tmp_path: Path) -> None:
    storage = Storage.init(tmp_path / "meta")
    unsigned = unsigned_commits(storage, 3)
    found = newest_verified(storage, unsigned[-1], b"")
    assert found.commit is None
    assert [(v.commit, v.reason) for v in found.refused] == [
        (commit_id, "the commit is not signed") for commit_id in unsigned[::-1]
    ]


def test_unverified_commits_lists_each_commit_above_the_base_that_would_not_be_served(
    tmp_path: Path,
) -> None:
    storage = Storage.init(tmp_path / "meta")
    base, *above = unsigned_commits(storage, 4)
    assert unverified_commits(storage, above[-1], base, b"") == [
        f"commit {commit_id}: would not be served: the commit is not signed"
        for commit_id in above[::-1]
    ]
    assert unverified_commits(storage, base, base, b"") == []


def test_unverified_commits_without_a_base_checks_only_the_head(tmp_path: Path) -> None:
    storage = Storage.init(tmp_path / "meta")
    *_, head = unsigned_commits(storage, 3)
    assert unverified_commits(storage, head, None, b"") == [
        f"commit {head}: would not be served: the commit is not signed"
    ]


def test_unverified_commits_stops_at_the_search_limit(tmp_path: Path) -> None:
    storage = Storage.init(tmp_path / "meta")
    commits = unsigned_commits(storage, SEARCH_LIMIT + 2)
    problems = unverified_commits(storage, commits[-1], commits[0], b"")
    assert len(problems) == SEARCH_LIMIT
    assert problems[-1].startswith(f"commit {commits[2]}: ")


def test_unverified_commits_passes_a_signed_commit(tmp_path: Path, repository: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    base = commit_at(repository, None, "2024-05-01T12:00:00Z", "base")
    head = commit_at(repository, alice, "2024-05-02T12:00:00Z", "head")
    signers = allowed_signers_line("alice@example.org", alice)
    assert unverified_commits(Storage(repository), head, base, signers) == []


def configured(repository: Path, **settings: str) -> Storage:
    for key, value in settings.items():
        git(repository, "config", key.replace("_", "."), value)
    return Storage(repository)


@pytest.mark.parametrize("setting", ["true", "yes", "on", "1", "TRUE", "On"])
def test_commit_gpgsign_in_any_of_gits_spellings_of_true_signs_with_the_ssh_key(
    repository: Path, setting: str
) -> None:
    storage = configured(
        repository, commit_gpgsign=setting, gpg_format="ssh", user_signingkey="/keys/alice"
    )
    assert signing_key(storage) == "/keys/alice"


@pytest.mark.parametrize("setting", ["false", "no", "off", "0"])
def test_commit_gpgsign_false_means_commits_are_not_signed(repository: Path, setting: str) -> None:
    storage = configured(
        repository, commit_gpgsign=setting, gpg_format="ssh", user_signingkey="/keys/alice"
    )
    assert signing_key(storage) is None


def test_no_signing_configuration_means_commits_are_not_signed(repository: Path) -> None:
    assert signing_key(Storage(repository)) is None


@pytest.mark.parametrize("settings", [{}, {"gpg_format": "openpgp"}, {"gpg_format": "x509"}])
def test_signing_with_gpg_is_refused_with_a_pointer_to_gpg_format_ssh(
    repository: Path, settings: dict[str, str]
) -> None:
    storage = configured(repository, commit_gpgsign="true", user_signingkey="ABCD", **settings)
    with pytest.raises(InvalidInput) as raised:
        signing_key(storage)
    assert str(raised.value) == (
        "git is configured to sign commits with GPG; metasrv signs only with SSH keys "
        "(gpg.format = ssh)"
    )


def test_signing_with_ssh_but_no_key_is_refused(repository: Path) -> None:
    storage = configured(repository, commit_gpgsign="true", gpg_format="ssh")
    with pytest.raises(InvalidInput) as raised:
        signing_key(storage)
    assert str(raised.value) == "commit.gpgsign is set but user.signingkey names no SSH key"


def test_a_signer_given_a_key_under_home_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = make_key(tmp_path / "home" / ".ssh", "alice")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    signature = SshSigner("~/.ssh/alice")(b"content")
    assert signature.startswith(b"-----BEGIN SSH SIGNATURE-----")
    signers = tmp_path / "signers"
    signers.write_bytes(allowed_signers_line("alice@example.org", alice))
    (tmp_path / "sig").write_bytes(signature)
    checked = subprocess.run(
        [
            *("ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "alice@example.org"),
            *("-n", "git", "-s", str(tmp_path / "sig")),
        ],
        input=b"content",
        capture_output=True,
        check=False,
        timeout=DEADLINE_SECONDS,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("key", ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA", "key::ssh-ed25519 AAAA"])
def test_a_literal_public_key_as_signing_key_is_refused(key: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        SshSigner(key)(b"content")
    assert str(raised.value) == "user.signingkey must name a key file, not a literal key"


def test_a_missing_key_file_is_refused_with_ssh_keygens_first_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-key"
    with pytest.raises(InvalidInput) as raised:
        SshSigner(str(missing))(b"content")
    message = str(raised.value)
    assert message.startswith(f"cannot sign with {missing}: ")
    assert "\n" not in message
    assert len(message) > len(f"cannot sign with {missing}: ")


def test_a_key_file_others_can_read_is_refused_with_ssh_keygens_reason(tmp_path: Path) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    alice.chmod(0o644)
    with pytest.raises(InvalidInput) as raised:
        SshSigner(str(alice))(b"content")
    # Not the first line ssh-keygen writes, a row of @, but the one that says what is wrong.
    assert str(raised.value) == (
        f"cannot sign with {alice}: Permissions 0644 for '{alice}' are too open."
    )


def test_signing_without_ssh_keygen_says_it_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(InvalidInput) as raised:
        SshSigner(str(alice))(b"content")
    assert str(raised.value).startswith(f"cannot sign with {alice}: cannot run ssh-keygen: ")


@pytest.mark.parametrize("zone", ["UTC0", "EST5", "JST-9"])
def test_a_keys_validity_is_judged_at_commit_time_whatever_the_servers_time_zone(
    tmp_path: Path, repository: Path, monkeypatch: pytest.MonkeyPatch, zone: str
) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    public = alice.with_name("alice.pub").read_text().split()
    line = f'a@example.org namespaces="git",valid-after="20200101000000Z" {public[0]} {public[1]}\n'
    early = commit_at(repository, alice, "2019-12-31T23:00:00Z", "early")
    on_time = commit_at(repository, alice, "2020-01-01T01:00:00Z", "on time")
    monkeypatch.setenv("TZ", zone)  # read by this process's local time and by ssh-keygen's
    time.tzset()
    try:
        assert not verify_commit(Storage(repository), early, line.encode()).verified
        assert verify_commit(Storage(repository), on_time, line.encode()).verified
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_principal_that_is_not_utf_8_is_refused_not_an_error(
    tmp_path: Path, repository: Path
) -> None:
    alice = make_key(tmp_path / "keys", "alice")
    head = commit_at(repository, alice, "2024-05-01T12:00:00Z")
    signers = allowed_signers_line("caf\xe9@example.org", alice).replace(b"\xc3\xa9", b"\xe9")
    verdict = verify_commit(Storage(repository), head, signers)
    assert not verdict.verified
    assert verdict.reason is not None
    assert verdict.reason.startswith("the signature does not verify: ")
