"""The read API's answers: JSON bodies at a pinned commit, cached by git object id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from packaging.utils import NormalizedName

from metasrv.errors import InvalidInput, MetasrvError, NotFound
from metasrv.http import documents
from metasrv.http.bytecache import ByteCache
from metasrv.http.documents import encode
from metasrv.http.listings import Listings
from metasrv.markers import (
    MarkerSets,
    annotate_requirements,
    check_client_marker,
    evaluate,
    named_extras,
    parse_marker,
    parse_requirement,
)
from metasrv.model import Release
from metasrv.names import normalize_name, parse_version
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import BlobId, CommitId
from metasrv.understandings.cooldown import Cooldown, apply_cooldown
from metasrv.understandings.mirrors import MirrorStatus
from metasrv.understandings.overrides import Layer, PatchedRelease, apply_layers
from metasrv.understandings.registry import Understandings
from metasrv.understandings.rules import Registration, rule_path

# Behind fastpath.py's 48 MB of whole answers (what a commit leaves of them is read from here):
# 72 MB for the two, against the 64 MB this one had alone, within issue 12's RSS bound.
BODY_CACHE_BYTES = 24 * 1024 * 1024
IMMUTABLE = b"public, max-age=31536000, immutable"
# A moving ref may gain a commit at any moment; a short max-age bounds how stale a cache can be.
MOVING = b"public, max-age=10"


@dataclass(frozen=True, slots=True)
class Pin:
    """A resolved commit, and whether answers read at it may be cached forever."""

    commit_id: CommitId
    immutable: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON body read at one commit, with what its caching headers are made from."""

    pin: Pin
    etag: str
    body: bytes  # without "at", which is spliced in per response
    pending: bool = False  # some file's metadata is not read yet (pull-through)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Return the ETag, Cache-Control and X-Metasrv-At headers."""
        return [
            (b"etag", f'"{self.etag}"'.encode()),
            (b"cache-control", IMMUTABLE if self.pin.immutable else MOVING),
            (b"x-metasrv-at", self.pin.commit_id.encode()),
        ]

    def content(self) -> bytes:
        """Return the body with ``at`` first."""
        return b'{"at":"' + self.pin.commit_id.encode() + b'",' + self.body[1:]


@dataclass(frozen=True, slots=True)
class _LayeredView:
    pin: Pin
    normalized_name: NormalizedName
    blob_id: BlobId
    layers: list[Layer]
    commits: list[tuple[str, str]]
    etag: str
    cooldown: Cooldown | None
    commit_time: datetime

    def apply(self, release: Release) -> PatchedRelease:
        """Return a release as this view shows it: understandings applied, then the cooldown."""
        patched = apply_layers(release, self.layers)
        if self.cooldown is None:
            return patched
        return apply_cooldown(patched, self.cooldown, self.commit_time)


class ReadApi:
    """The read API over one catalog, with encoded bodies cached by object id."""

    def __init__(
        self, catalog: Catalog, understandings: Understandings, marker_sets: MarkerSets
    ) -> None:
        self.catalog = catalog
        self.understandings = understandings
        self.marker_sets = marker_sets
        self.bodies = ByteCache(BODY_CACHE_BYTES)
        self.listings = Listings(catalog.storage.path, self.bodies)

    def pin(self, at: str | None) -> Pin:
        """Resolve ``?at=`` (or the served branch now) to a commit."""
        if at is None:
            return Pin(self.catalog.storage.resolve(None), immutable=False)
        if not at:
            raise InvalidInput("'at' is empty: expected a commit sha, a branch or a tag")
        commit_id = self.catalog.storage.resolve(at)
        # Only a full sha names the same commit forever; resolution returns full shas.
        return Pin(commit_id, immutable=at == commit_id)

    async def prepare(self, at: str | None, understanding: str) -> None:
        """Wait, off the loop and within a bound, for the mirror refreshes a read needs."""
        try:
            pin = self.pin(at)
        except MetasrvError:
            return  # the read itself reports it
        await self.understandings.prepare(pin.commit_id, understanding)

    async def prepare_all(self, at: str | None) -> None:
        """Wait, off the loop and within a bound, for missing mirrors of every registration."""
        try:
            pin = self.pin(at)
            names = ",".join(self.understandings.registrations(pin.commit_id))
        except MetasrvError:
            return  # the read itself reports it
        await self.understandings.prepare(pin.commit_id, names)

    def root(self, at: str | None) -> Answer:
        """Describe the server: source repository, branch, commit, endpoints."""
        pin = self.pin(at)
        config = self.catalog.config(pin.commit_id)
        body = {
            "api-version": documents.API_VERSION,
            "source": config.source_url,
            "branch": at or self.catalog.storage.served_branch(),
            "endpoints": {
                "projects": "/v1/projects",
                "project": "/v1/projects/{name}",
                "release": "/v1/projects/{name}/{version}",
                "understandings": "/v1/understandings",
                "marker-sets": "/v1/markers",
                "simple": "/simple/",
            },
        }
        return Answer(pin, f"root-{pin.commit_id}", encode(body))

    async def projects(self, at: str | None, since: str | None) -> Answer:
        """List every project, or only those changed since a commit (a miss: off the loop)."""
        pin = self.pin(at)
        tree_id = self.catalog.data_tree(pin.commit_id)
        if since is None:
            body = await self.listings.listing(pin.commit_id, tree_id)
            return Answer(pin, f"list-{pin.commit_id}", body)
        if not since:
            raise InvalidInput("'since' is empty: expected a commit sha")
        since_id = self.catalog.storage.resolve(since)
        body = await self.listings.changes(since_id, pin.commit_id, tree_id)
        return Answer(pin, f"since-{since_id}-{pin.commit_id}", body)

    def project(self, at: str | None, name: str) -> Answer:
        """Return a project's versions."""
        pin = self.pin(at)
        normalized_name, blob_id = self.catalog.project_blob(pin.commit_id, name)
        key = ("project", blob_id)
        body = self.bodies.get(key)
        if body is None:
            project = self.catalog.parse_project(blob_id, normalized_name)
            body = encode(documents.render_project(project))
            self.bodies.put(key, body)
        return Answer(pin, f"{pin.commit_id}-{blob_id}", body)

    def release(self, at: str | None, name: str, version_text: str) -> Answer:
        """Return one release's metadata and files."""
        pin = self.pin(at)
        normalized_name, blob_id = self.catalog.project_blob(pin.commit_id, name)
        key = ("release", blob_id, version_text)
        body = self.bodies.get(key)
        if body is None:
            # Unknown versions are remembered too: in a large file, finding none costs the most.
            missing = self.bodies.get(("missing", blob_id, version_text))
            if missing is not None:
                raise NotFound(missing.decode())
            version = parse_version(version_text)
            name, release = self.catalog.read_release(blob_id, normalized_name, version)
            if release is None:
                message = f"unknown version {version_text!r} of {name!r}"
                self.bodies.put(("missing", blob_id, version_text), message.encode())
                raise NotFound(message)
            body = encode(documents.render_release(name, normalized_name, release))
            if _pending(release):
                # Not cached: pull-through reads the metadata and the next read shows it.
                return Answer(pin, f"{pin.commit_id}-{blob_id}", body, pending=True)
            self.bodies.put(key, body)
        return Answer(pin, f"{pin.commit_id}-{blob_id}", body)

    def patched_release(
        self,
        at: str | None,
        name: str,
        version_text: str,
        understanding: str | None,
        cooldown: str | None = None,
    ) -> Answer:
        """Return one release with the listed understandings applied, in order, with provenance."""
        view = self._layered(at, name, understanding, cooldown)
        registered, release = self.catalog.read_release(
            view.blob_id, view.normalized_name, parse_version(version_text)
        )
        if release is None:
            raise NotFound(f"unknown version {version_text!r} of {registered!r}")
        patched = view.apply(release)
        document = documents.render_patched_release(
            registered, view.normalized_name, patched, view.commits
        )
        return Answer(view.pin, view.etag, encode(document), pending=_pending(release))

    def patched_project(
        self, at: str | None, name: str, understanding: str | None, cooldown: str | None = None
    ) -> Answer:
        """Return a project's versions with the listed understandings applied to every release."""
        view = self._layered(at, name, understanding, cooldown)
        project = self.catalog.parse_project(view.blob_id, view.normalized_name)
        patched = [view.apply(release) for release in project.releases]
        releases = tuple(p.release for p in patched)
        document = documents.render_project(replace(project, releases=releases))
        for version, patched_release in zip(document["versions"], patched, strict=True):
            version["hidden"] = patched_release.hidden_release
        document["understandings"] = [{"name": n, "commit": c} for n, c in view.commits]
        # Rules select releases by their metadata, so every release's metadata is wanted.
        pending = any(layer.rules is not None for layer in view.layers) and any(
            _pending(release) for release in project.releases
        )
        return Answer(view.pin, view.etag, encode(document), pending=pending)

    def _layered(
        self, at: str | None, name: str, understanding: str | None, cooldown: str | None = None
    ) -> _LayeredView:
        pin = self.pin(at)
        pinned = self.understandings.pin(pin.commit_id, understanding) if understanding else []
        if understanding is not None and not understanding:
            raise InvalidInput("invalid understanding list '': expected name[@commit],...")
        normalized_name, blob_id = self.catalog.project_blob(pin.commit_id, name)
        commits = [(p.registration.name, str(p.commit)) for p in pinned]
        layer_key = hashlib.sha256(repr((commits, cooldown)).encode()).hexdigest()[:16]
        return _LayeredView(
            # Cached forever only when the data and every understanding are pinned.
            pin=Pin(pin.commit_id, pin.immutable and all(p.immutable for p in pinned)),
            normalized_name=normalized_name,
            blob_id=blob_id,
            layers=[self.understandings.layer(p, normalized_name) for p in pinned],
            commits=commits,
            etag=f"{pin.commit_id}-{blob_id}-{layer_key}",
            cooldown=Cooldown.from_text(cooldown) if cooldown is not None else None,
            commit_time=datetime.fromtimestamp(
                self.catalog.storage.commit_time(pin.commit_id), UTC
            ),
        )

    def understanding_list(self, at: str | None) -> Answer:
        """List the registered understandings with their heads and mirror state."""
        pin = self.pin(at)
        registrations = self.understandings.registrations(pin.commit_id)
        body = encode(
            {"understandings": [self._registration(pin, r) for r in registrations.values()]}
        )
        return Answer(pin, f"understandings-{pin.commit_id}-{_state_key(body)}", body)

    def understanding(self, at: str | None, name: str, project: str | None) -> Answer:
        """Describe one understanding; with a project, say where a write for it goes."""
        pin = self.pin(at)
        registration = self.understandings.get(pin.commit_id, name)
        document = self._registration(pin, registration)
        if project is not None:
            document["write"] = {
                "repository": registration.repository,
                "branch": registration.branch,
                "path": rule_path(registration.folder, normalize_name(project)),
            }
        body = encode(document)
        return Answer(pin, f"understanding-{pin.commit_id}-{_state_key(body)}", body)

    def marker_set_list(self, at: str | None) -> Answer:
        """List the marker sets with their descriptions and sizes."""
        pin = self.pin(at)
        sets = [
            self.marker_sets.get(pin.commit_id, n) for n in self.marker_sets.names(pin.commit_id)
        ]
        body = encode(
            {
                "marker-sets": [
                    {
                        "name": s.name,
                        "description": s.description,
                        "environments": len(s.environments),
                    }
                    for s in sets
                ]
            }
        )
        return Answer(pin, f"markers-{pin.commit_id}", body)

    def marker_set(self, at: str | None, name: str) -> Answer:
        """Return one marker set with its environments and how it was made."""
        pin = self.pin(at)
        marker_set = self.marker_sets.get(pin.commit_id, name)
        return Answer(pin, f"marker-set-{pin.commit_id}-{name}", encode(marker_set.to_toml()))

    def evaluate(
        self, at: str | None, name: str, marker: str | None, requirement: str | None
    ) -> Answer:
        """Return the environments of a set that a marker (or a requirement's marker) holds in."""
        pin = self.pin(at)
        marker_set = self.marker_sets.get(pin.commit_id, name)
        if (marker is None) == (requirement is None):
            raise InvalidInput("give exactly one of 'marker' and 'requirement'")
        if marker is not None:
            parsed = parse_marker(check_client_marker(marker, "the marker"))
            ids = evaluate(parsed, marker_set.environments)
            document: dict[str, Any] = {"marker": marker, "environments": ids}
        else:
            assert requirement is not None
            # The extras a requirement can apply under are the ones its marker names.
            named = named_extras(
                parse_requirement(check_client_marker(requirement, "the requirement"))
            )
            (annotated,) = annotate_requirements([requirement], named, marker_set.environments)
            document = {"requirement": requirement, **annotated}
        document["set"] = marker_set.name
        key = hashlib.sha256(repr((marker, requirement)).encode()).hexdigest()[:16]
        return Answer(pin, f"evaluate-{pin.commit_id}-{name}-{key}", encode(document))

    def annotated_release(
        self,
        at: str | None,
        name: str,
        version_text: str,
        markers: str,
        understanding: str | None,
        *,
        cooldown: str | None = None,
    ) -> Answer:
        """Return a release (patched or cooled down when asked) with each requirement's
        environments."""
        answer = (
            self.patched_release(at, name, version_text, understanding, cooldown)
            if understanding is not None or cooldown is not None
            else self.release(at, name, version_text)
        )
        marker_set = self.marker_sets.get(answer.pin.commit_id, markers)
        document = json.loads(answer.body)
        document["markers"] = {
            "set": marker_set.name,
            "requirements": annotate_requirements(
                document["requires-dist"] or [],
                document["provides-extra"] or [],
                marker_set.environments,
            ),
        }
        return Answer(
            answer.pin, f"{answer.etag}-{markers}", encode(document), pending=answer.pending
        )

    def _registration(self, pin: Pin, registration: Registration) -> dict[str, Any]:
        status = self.understandings.status.get(registration.name)
        try:
            signed = self.understandings.signed_head(registration, pin.commit_id)
        except MetasrvError:
            signed = None
        try:
            head: str | None = self.understandings.head(registration, pin.commit_id)
        except MetasrvError as exc:
            head = None  # why: a refused registration, a failing mirror, no verified commit
            status = replace(status or MirrorStatus(), error=exc.message)
        return documents.render_registration(registration, head, status, signed)


def _pending(release: Release) -> bool:
    return any(dist_file.metadata_pending for dist_file in release.files)


def _state_key(body: bytes) -> str:
    # Mirror heads and fetch times change without a meta commit; the body itself says when.
    return hashlib.sha256(body).hexdigest()[:16]
