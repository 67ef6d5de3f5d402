"""Every project's registered name at one commit, kept beside the repository between processes.

Listing 740,000 projects from git reads every project file (minutes); a server, each of its
workers, and every restart would pay it again. Kept here, a new process reads the file and
follows the tree diff from its commit. It is derived from git: deleting it costs one slow listing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from packaging.utils import NormalizedName

from metasrv.repo.storage import CommitId

FOLDER = "metasrv-cache"
FILE_NAME = "names"
_COMMIT_ID_LENGTH = 40
_END = "end"


def names_file(git_dir: Path) -> Path:
    """Return where a repository keeps its saved listing."""
    return git_dir / FOLDER / FILE_NAME


def load_names(path: Path) -> tuple[CommitId, dict[NormalizedName, str]] | None:
    """Return the saved commit and names, or None when the file is absent or damaged."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    commit, *lines = text.split("\n")
    if len(commit) != _COMMIT_ID_LENGTH or lines[-2:] != [_END, ""]:
        return None  # a file cut short is not trusted: its last line says it is whole
    names: dict[NormalizedName, str] = {}
    # One line per project: its normalized name, then its registered name where that differs.
    for line in lines[:-2]:
        normalized_name, _, registered = line.partition(" ")
        names[NormalizedName(normalized_name)] = registered or normalized_name
    return CommitId(commit), names


def save_names(path: Path, commit_id: CommitId, names: dict[NormalizedName, str]) -> None:
    """Write the listing of a commit atomically; a repository we may not write is left alone."""
    if any(" " in registered or "\n" in registered for registered in names.values()):
        return  # a name the format cannot hold (a hand-edited file): list from git instead
    lines = [
        normalized if registered == normalized else f"{normalized} {registered}"
        for normalized, registered in names.items()
    ]
    text = "".join(f"{line}\n" for line in [commit_id, *lines, _END])
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    except OSError:
        return  # derived data: without it the next process lists from git again
