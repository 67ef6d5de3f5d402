"""Real SSH keys and git-signed commits for tests, made with ssh-keygen and the git CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

from metasrv.repo.storage import CommitId

DEADLINE_SECONDS = 30


def make_key(folder: Path, name: str) -> Path:
    """Create an ed25519 key pair without a passphrase; return the private key's path."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
        check=True,
        timeout=DEADLINE_SECONDS,
    )
    return key


def allowed_signers_line(principal: str, key: Path) -> bytes:
    """Return one allowed_signers line that lets ``principal`` sign git commits with ``key``."""
    public = key.with_name(f"{key.name}.pub").read_text().split()
    return f'{principal} namespaces="git" {public[0]} {public[1]}\n'.encode()


def git(repository: Path, *arguments: str) -> str:
    """Run git in a working tree and return its output."""
    completed = subprocess.run(
        ["git", "-C", str(repository), *arguments],
        check=True,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
    )
    return completed.stdout.strip()


def git_commit(repository: Path, files: dict[str, bytes], key: Path | None) -> CommitId:
    """Write files and commit them with the git CLI, signed with ``key`` when given."""
    for path, content in files.items():
        target = repository / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    git(repository, "add", "--all")
    signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"] if key else []
    git(repository, *signing, "commit", "-q", *(["-S"] if key else []), "-m", "rules")
    return CommitId(git(repository, "rev-parse", "HEAD"))
