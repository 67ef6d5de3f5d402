"""Git's SSH commit signatures, verified and made by OpenSSH's ``ssh-keygen -Y``."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from metasrv.errors import InvalidInput
from metasrv.repo.storage import CommitId, Storage

SSH_SIGNATURE_HEADER = b"-----BEGIN SSH SIGNATURE-----"
NAMESPACE = "git"  # the namespace git signs commits in (gpg.ssh)
SSH_KEYGEN_TIMEOUT_SECONDS = 20
# How far back a branch is searched for a commit that verifies.
MAX_UNVERIFIED_COMMITS = 100


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a commit's signature verifies against a list of allowed signers, and why not."""

    commit: CommitId
    signer: str | None  # the principal the signature verified for
    reason: str | None  # why it does not verify; None when it does

    @property
    def verified(self) -> bool:
        """Return whether the signature verified."""
        return self.reason is None


@dataclass(frozen=True, slots=True)
class SignedHead:
    """The newest commit of a branch that verifies, and the newer ones that were refused."""

    commit: CommitId | None
    refused: tuple[Verdict, ...]


def verify_commit(storage: Storage, commit_id: CommitId, allowed_signers: bytes) -> Verdict:
    """Verify a commit's SSH signature against an ``allowed_signers`` file's content."""
    signed = storage.commit_signature(commit_id)
    if signed is None:
        return Verdict(commit_id, None, "the commit is not signed")
    signature, payload = signed
    if not signature.lstrip().startswith(SSH_SIGNATURE_HEADER):
        return Verdict(commit_id, None, "the commit is not signed with an SSH key")
    # ssh-keygen reads a verify-time (and valid-after / valid-before) in the local time zone, so
    # the commit time is given in it too, as git does.
    when = datetime.fromtimestamp(storage.commit_time(commit_id)).strftime("%Y%m%d%H%M%S")
    try:
        return _verify(commit_id, signature, payload, allowed_signers, when)
    except _Unavailable as exc:
        # Not a verdict on the commit, so not cached: the next request tries again.
        return Verdict(commit_id, None, str(exc))


class _Unavailable(Exception):
    """ssh-keygen could not be run or did not finish in time."""


def _verify_uncached(
    commit_id: CommitId, signature: bytes, payload: bytes, allowed_signers: bytes, when: str
) -> Verdict:
    with tempfile.TemporaryDirectory(prefix="metasrv-verify-") as folder:
        signers_path, signature_path = Path(folder) / "allowed_signers", Path(folder) / "sig"
        signers_path.write_bytes(allowed_signers)
        signature_path.write_bytes(signature)
        # Keys in allowed_signers may carry valid-after / valid-before: judge them at commit time,
        # as git does.
        found = _ssh_keygen(
            [
                "-Y",
                "find-principals",
                "-f",
                str(signers_path),
                "-s",
                str(signature_path),
                f"-Overify-time={when}",
            ],
            b"",
        )
        principals = found.stdout.decode(errors="replace").splitlines()
        if found.returncode != 0 or not principals:
            return Verdict(commit_id, None, "signed by a key that is not an allowed signer")
        checked = _ssh_keygen(
            [
                "-Y",
                "verify",
                "-f",
                str(signers_path),
                "-I",
                principals[0],
                "-n",
                NAMESPACE,
                "-s",
                str(signature_path),
                f"-Overify-time={when}",
            ],
            payload,
        )
    if checked.returncode != 0:
        detail = checked.stderr.decode(errors="replace").strip().splitlines()
        return Verdict(commit_id, None, f"the signature does not verify: {' '.join(detail[:1])}")
    return Verdict(commit_id, principals[0], None)


# A commit's bytes never change, so one verdict per (commit, signer list) holds forever. (Wrapped
# here rather than decorated: mutmut leaves decorated functions alone.)
_verify = lru_cache(maxsize=4096)(_verify_uncached)


def _ssh_keygen(arguments: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["ssh-keygen", *arguments],
            input=stdin,
            capture_output=True,
            timeout=SSH_KEYGEN_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        # No verdict is a refusal: an unverifiable commit is never served as if it verified.
        raise _Unavailable(f"cannot run ssh-keygen: {exc}") from None


def newest_verified(storage: Storage, branch_head: CommitId, allowed_signers: bytes) -> SignedHead:
    """Return the newest commit on a branch's first-parent line that verifies."""
    refused: list[Verdict] = []
    commit_id: CommitId | None = branch_head
    while commit_id is not None and len(refused) < MAX_UNVERIFIED_COMMITS:
        verdict = verify_commit(storage, commit_id, allowed_signers)
        if verdict.verified:
            return SignedHead(commit_id, tuple(refused))
        refused.append(verdict)
        commit_id = storage.first_parent(commit_id)
    return SignedHead(None, tuple(refused))


def unverified_commits(
    storage: Storage, head: CommitId, base: CommitId | None, allowed_signers: bytes
) -> list[str]:
    """Return a problem for every commit from ``head`` back to ``base`` that does not verify."""
    problems = []
    commit_id: CommitId | None = head
    for _ in range(MAX_UNVERIFIED_COMMITS):
        if commit_id is None or commit_id == base:
            break
        verdict = verify_commit(storage, commit_id, allowed_signers)
        if not verdict.verified:
            problems.append(f"commit {commit_id}: would not be served: {verdict.reason}")
        if base is None:
            break  # without a base, only the commit under review
        commit_id = storage.first_parent(commit_id)
    return problems


def signing_key(storage: Storage) -> str | None:
    """Return the SSH key git is configured to sign this repository's commits with, if any."""
    if (storage.config_value("commit.gpgsign") or "").lower() not in ("true", "yes", "on", "1"):
        return None
    if (storage.config_value("gpg.format") or "openpgp").lower() != "ssh":
        raise InvalidInput(
            "git is configured to sign commits with GPG; metasrv signs only with SSH keys "
            "(gpg.format = ssh)"
        )
    key = storage.config_value("user.signingkey")
    if not key:
        raise InvalidInput("commit.gpgsign is set but user.signingkey names no SSH key")
    return key


@dataclass(frozen=True, slots=True)
class SshSigner:
    """Sign bytes with ``ssh-keygen -Y sign`` in git's namespace."""

    key: str

    def __call__(self, content: bytes) -> bytes:
        """Return the armored SSH signature of ``content``."""
        key_path = Path(self.key.removeprefix("key::")).expanduser()
        if self.key.startswith(("ssh-", "key::")):
            raise InvalidInput("user.signingkey must name a key file, not a literal key")
        try:
            signed = _ssh_keygen(["-Y", "sign", "-f", str(key_path), "-n", NAMESPACE], content)
        except _Unavailable as exc:
            raise InvalidInput(f"cannot sign with {key_path}: {exc}") from None
        if signed.returncode != 0 or SSH_SIGNATURE_HEADER not in signed.stdout:
            lines = signed.stderr.decode(errors="replace").strip().splitlines()
            # A key others may read is refused under a banner of @ lines; the reason follows it.
            detail = [line for line in lines if not line.startswith("@")]
            raise InvalidInput(f"cannot sign with {key_path}: {' '.join(detail[:1])}")
        return signed.stdout
