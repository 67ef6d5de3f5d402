"""Validate and normalize project names and versions; the one place that maps a name to its path."""

from __future__ import annotations

import hashlib
import re

from packaging.utils import InvalidName, NormalizedName, canonicalize_name
from packaging.version import InvalidVersion, Version

from metasrv.errors import InvalidInput

# Longer than any name PyPI has registered; it bounds what a client can make us hash or echo back.
MAX_NAME_LENGTH = 200
MAX_VERSION_LENGTH = 100
PROJECT_SUFFIX = ".toml"
_LABEL = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def normalize_name(name: str) -> NormalizedName:
    """Return the PEP 503 normalized form of a valid PEP 508 project name."""
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"project name is longer than {MAX_NAME_LENGTH} characters")
    try:
        return canonicalize_name(name, validate=True)
    except InvalidName:
        raise InvalidInput(f"invalid project name {name!r}: expected a PEP 508 name") from None


def parse_version(version: str) -> Version:
    """Return the PEP 440 version a string spells."""
    if len(version) > MAX_VERSION_LENGTH:
        raise InvalidInput(f"version is longer than {MAX_VERSION_LENGTH} characters")
    try:
        return Version(version)
    except InvalidVersion:
        raise InvalidInput(f"invalid version {version!r}: expected a PEP 440 version") from None


def shard_path(normalized_name: NormalizedName) -> str:
    """Return the shard folder of a normalized name: its first two characters, then a hash byte.

    The prefix keeps the tree browsable; the hash byte splits crowded prefixes (``py`` holds tens of
    thousands of PyPI projects) so that no tree holds more than a few thousand entries.
    """
    digest = hashlib.sha256(normalized_name.encode()).hexdigest()
    return f"{normalized_name[:2]}/{digest[:2]}"


def project_path(normalized_name: NormalizedName) -> str:
    """Return the path of a project's file below a data root."""
    return f"{shard_path(normalized_name)}/{normalized_name}{PROJECT_SUFFIX}"


def name_from_path(path: str) -> NormalizedName | None:
    """Return the normalized name a project path holds, or None when the path is not one."""
    parts = path.split("/")
    if len(parts) != 3 or not parts[2].endswith(PROJECT_SUFFIX):
        return None
    stem = parts[2][: -len(PROJECT_SUFFIX)]
    if canonicalize_name(stem) != stem or project_path(NormalizedName(stem)) != path:
        return None
    return NormalizedName(stem)


def validate_label(name: str, what: str) -> str:
    """Return ``name`` if it can name an understanding or a marker set, else InvalidInput.

    Lowercase ASCII letters, digits, ``-`` and ``_``, starting with a letter or digit, at most
    64 characters: safe in URLs, file names and TOML keys alike.
    """
    if not _LABEL.fullmatch(name):
        raise InvalidInput(
            f"invalid {what} {name[:80]!r}: use lowercase letters, digits, - and _ (at most 64)"
        )
    return name


CORE_METADATA_ROOT = "core-metadata"


def core_metadata_path(sha256: str) -> str:
    """Return where a meta repository stores the metadata document with this sha256."""
    if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
        raise InvalidInput(f"{sha256!r} is not a sha256 hex digest")
    return f"{CORE_METADATA_ROOT}/{sha256[:2]}/{sha256[2:4]}/{sha256}.metadata"
