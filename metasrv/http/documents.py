"""The JSON shapes of the read API, built from model records; no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from packaging.utils import NormalizedName

from metasrv.model import CoreMetadata, DistFile, Project, Release, render_metadata
from metasrv.repo.catalog import ProjectChange
from metasrv.understandings.mirrors import MirrorStatus
from metasrv.understandings.overrides import PatchedRelease
from metasrv.understandings.rules import Registration
from metasrv.understandings.signatures import SignedHead

API_VERSION = "1.0"


def render_listing(names: Mapping[NormalizedName, str]) -> dict[str, Any]:
    """Return every project as normalized and registered name."""
    return {
        "projects": [
            {"name": name, "normalized-name": normalized_name}
            for normalized_name, name in names.items()
        ]
    }


def render_changes(since: str, changes: Iterable[ProjectChange]) -> dict[str, Any]:
    """Return the projects added, changed or removed since a commit."""
    return {
        "since": since,
        "projects": [
            {
                "name": change.name,
                "normalized-name": change.normalized_name,
                "change": change.change,
            }
            for change in changes
        ],
    }


def render_project(project: Project) -> dict[str, Any]:
    """Return a project's versions in PEP 440 order, each with yank, Requires-Python, file count."""
    return {
        "name": project.name,
        "normalized-name": project.normalized_name,
        "versions": [
            {
                "version": release.version_text,
                "yanked": release.yanked,
                "requires-python": release.requires_python,
                "files": len(release.files),
            }
            for release in project.releases
        ],
    }


def render_release(name: str, normalized_name: str, release: Release) -> dict[str, Any]:
    """Return a release's resolver metadata and files, each file's metadata where it differs."""
    return {
        "name": name,
        "normalized-name": normalized_name,
        "version": release.version_text,
        "yanked": release.yanked,
        **render_metadata(release.metadata),
        "files": [render_file(dist_file, release.metadata) for dist_file in release.files],
    }


def render_file(dist_file: DistFile, common: CoreMetadata | None) -> dict[str, Any]:
    """Return one file; ``metadata`` is present only where it differs from the release's."""
    rendered: dict[str, Any] = {
        "filename": dist_file.filename,
        "url": dist_file.url,
        "hashes": dict(dist_file.hashes),
        "size": dist_file.size,
        "upload-time": dist_file.upload_time,
        "requires-python": dist_file.requires_python,
        "yanked": dist_file.yanked,
        # "known" where the data file has no status: a reader sees a note is not a failure.
        "metadata-status": str(dist_file.metadata_status or "known"),
        "metadata-reason": dist_file.metadata_reason,
    }
    if dist_file.metadata_built_on is not None:
        rendered["metadata-built-on"] = dist_file.metadata_built_on
    if dist_file.metadata != common:
        rendered["metadata"] = (
            None if dist_file.metadata is None else render_metadata(dist_file.metadata)
        )
    return rendered


def render_registration(
    registration: Registration,
    head: str | None,
    status: MirrorStatus | None,
    signed: SignedHead | None = None,
) -> dict[str, Any]:
    """Return an understanding's registration, its served commit and its mirror's state."""
    document: dict[str, Any] = {
        "name": registration.name,
        "description": registration.description,
        "repository": registration.repository,
        "branch": registration.branch,
        "folder": registration.folder,
        "gate": registration.gate,
        "head": head,
        "last-fetch": _timestamp(status.last_fetch) if status else None,
        "fetch-error": status.error if status else None,
    }
    if registration.allowed_signers is not None:
        document["allowed-signers"] = registration.allowed_signers
        document["refused"] = [
            {"commit": verdict.commit, "reason": verdict.reason}
            for verdict in (signed.refused if signed is not None else ())
        ]
    return document


def _timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_patched_release(
    name: str, normalized_name: str, patched: PatchedRelease, pinned: list[tuple[str, str]]
) -> dict[str, Any]:
    """Return a release with understandings applied, its original metadata, and provenance."""
    document = render_release(name, normalized_name, patched.release)
    document["original"] = {
        "yanked": patched.original.yanked,
        **render_metadata(patched.original.metadata),
    }
    document["patches"] = [patch.to_json() for patch in patched.patches]
    document["conflicts"] = [conflict.to_json() for conflict in patched.conflicts]
    # Hidden, not yanked: a gate has not approved it, or a cooldown holds it back.
    hidden = patched.hidden_reasons
    document["hidden"] = patched.hidden_release
    for rendered in document["files"]:
        rendered["hidden"] = hidden.get(rendered["filename"])
    document["approvals"] = [approval.to_json() for approval in patched.approvals]
    document["understandings"] = [{"name": n, "commit": c} for n, c in pinned]
    return document


def encode(document: dict[str, Any]) -> bytes:
    """Return compact UTF-8 JSON."""
    return orjson.dumps(document)
