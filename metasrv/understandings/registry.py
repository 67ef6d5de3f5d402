"""Registered understandings: their mirrors, their rule files, and the layers a client opts into."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from packaging.utils import NormalizedName

from metasrv.errors import InvalidData, InvalidInput, NotFound, SourceError, Unverified
from metasrv.repo import tomlcodec
from metasrv.repo.storage import BlobId, CommitId, Storage
from metasrv.understandings.overrides import Layer
from metasrv.understandings.rules import (
    Registration,
    RuleFile,
    rule_path,
    validate_understanding_name,
)
from metasrv.understandings.signatures import SignedHead, newest_verified, verify_commit

UNDERSTANDINGS_ROOT = "understandings"
MAX_UNDERSTANDINGS_PER_REQUEST = 16
_FULL_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(slots=True)
class MirrorStatus:
    """When a mirror was last fetched, and the error of the last attempt if it failed."""

    last_fetch: float | None = None
    last_attempt: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Pinned:
    """An understanding resolved to one commit of the repository its rules live in."""

    registration: Registration
    storage: Storage
    commit: CommitId
    immutable: bool  # pinned by a full sha, or embedded (then it moves with the meta commit)


def registration_path(name: str) -> str:
    """Return where a meta repository registers an understanding."""
    return f"{UNDERSTANDINGS_ROOT}/{validate_understanding_name(name)}.toml"


class Understandings:
    """The understandings a meta repository registers, read at whichever commit is served."""

    def __init__(self, meta: Storage, mirrors: Path | None = None) -> None:
        self.meta = meta
        self.mirrors = mirrors or meta.path / "metasrv-mirrors"
        self.status: dict[str, MirrorStatus] = {}
        self._storages: dict[str, Storage] = {}
        self._registrations = lru_cache(maxsize=64)(self._read_registrations)
        self._rule_files = lru_cache(maxsize=1024)(self._parse_rule_file)
        self._last_verified: dict[tuple[str, bytes], CommitId] = {}

    def registrations(self, meta_commit: CommitId) -> dict[str, Registration]:
        """Return every registration at a meta commit, by name."""
        tree_id = self.meta.tree_id(meta_commit, UNDERSTANDINGS_ROOT)
        return {} if tree_id is None else self._registrations(tree_id)

    def _read_registrations(self, tree_id: str) -> dict[str, Registration]:
        registrations = {}
        for path, blob_id in self.meta.walk_blobs(tree_id):
            if "/" in path or not path.endswith(".toml"):
                continue
            where = f"{UNDERSTANDINGS_ROOT}/{path}"
            document = tomlcodec.loads(self.meta.read_blob(blob_id), where=where)
            registration = Registration.from_toml(document, where)
            if f"{registration.name}.toml" != path:
                raise InvalidData(f"{where}: registers {registration.name!r}, not {path[:-5]!r}")
            registrations[registration.name] = registration
        return registrations

    def get(self, meta_commit: CommitId, name: str) -> Registration:
        """Return one registration, or NotFound."""
        registration = self.registrations(meta_commit).get(validate_understanding_name(name))
        if registration is None:
            raise NotFound(f"unknown understanding {name!r}")
        return registration

    def storage_for(self, registration: Registration) -> Storage:
        """Return the repository an understanding's rules live in, cloning its mirror if new."""
        if registration.is_embedded:
            return self.meta
        path = self.mirrors / f"{registration.name}.git"
        if registration.name in self._storages:
            return self._storages[registration.name]
        if path.exists():
            return self._storages.setdefault(registration.name, Storage(path))
        self.mirrors.mkdir(parents=True, exist_ok=True)
        status = self.status.setdefault(registration.name, MirrorStatus())
        status.last_attempt = time.time()
        try:
            storage = Storage.clone_mirror(registration.repository, path)
        except SourceError as exc:
            status.error = exc.message
            raise
        status.last_fetch, status.error = time.time(), None
        return self._storages.setdefault(registration.name, storage)

    def fetch(self, registration: Registration) -> None:
        """Fetch an understanding's mirror; a failure keeps the last good copy and is recorded."""
        if registration.is_embedded:
            return
        status = self.status.setdefault(registration.name, MirrorStatus())
        if not (self.mirrors / f"{registration.name}.git").exists():
            self.storage_for(registration)
            return
        status.last_attempt = time.time()
        try:
            # A handle of its own: the fetch runs on a worker thread beside request handlers.
            Storage(self.mirrors / f"{registration.name}.git").fetch_mirror()
        except SourceError as exc:
            status.error = exc.message
            return
        status.last_fetch, status.error = time.time(), None

    def fetch_all(self, meta_commit: CommitId) -> None:
        """Fetch every registered mirror, recording failures instead of raising them."""
        for registration in self.registrations(meta_commit).values():
            try:
                self.fetch(registration)
                self._verify_fetched(registration, meta_commit)
            except (SourceError, InvalidData, InvalidInput, NotFound):
                continue

    def _verify_fetched(self, registration: Registration, meta_commit: CommitId) -> None:
        """Verify a fetched branch's new commits here, so no request waits on ssh-keygen."""
        signers = self.allowed_signers(registration, meta_commit)
        if signers is None:
            return
        # A handle of its own, as for the fetch; the verdicts land in a cache requests share.
        mirror = Storage(self.mirrors / f"{registration.name}.git")
        newest_verified(mirror, mirror.resolve(registration.branch), signers)

    def head(self, registration: Registration, meta_commit: CommitId) -> CommitId:
        """Return the commit an understanding is served at (embedded ones: the meta commit).

        With allowed signers, that is the newest commit of the branch whose signature verifies.
        """
        if registration.is_embedded:
            return meta_commit
        signed = self.signed_head(registration, meta_commit)
        if signed is None:
            return self.storage_for(registration).resolve(registration.branch)
        if signed.commit is None:
            newest = signed.refused[0]
            raise SourceError(
                f"understanding {registration.name!r} has no commit signed by an allowed signer "
                f"(its head {newest.commit}: {newest.reason})"
            )
        return signed.commit

    def allowed_signers(self, registration: Registration, meta_commit: CommitId) -> bytes | None:
        """Return the allowed-signers file a registration names, read at the meta commit."""
        if registration.allowed_signers is None:
            return None
        content = self.meta.read(meta_commit, registration.allowed_signers)
        if content is None:
            raise InvalidData(
                f"understanding {registration.name!r}: its allowed-signers file "
                f"{registration.allowed_signers!r} is not in the meta repository"
            )
        return content

    def signed_head(self, registration: Registration, meta_commit: CommitId) -> SignedHead | None:
        """Return the newest verifying commit and the refused ones above it (None: unsigned)."""
        signers = self.allowed_signers(registration, meta_commit)
        if signers is None:
            return None
        storage = self.storage_for(registration)
        found = newest_verified(storage, storage.resolve(registration.branch), signers)
        key = (registration.name, signers)
        if found.commit is not None:
            self._last_verified[key] = found.commit
            return found
        # A branch rewritten to unverified history: the last verified head keeps serving.
        return SignedHead(self._last_verified.get(key), found.refused)

    def pin(self, meta_commit: CommitId, spec: str) -> list[Pinned]:
        """Resolve ``name[@ref],...`` in client order; an unseen pinned sha triggers a fetch."""
        items = [item.strip() for item in spec.split(",")]
        if not spec or len(items) > MAX_UNDERSTANDINGS_PER_REQUEST or not all(items):
            raise InvalidInput(
                f"invalid understanding list {spec[:100]!r}: expected name[@commit],... "
                f"(at most {MAX_UNDERSTANDINGS_PER_REQUEST})"
            )
        pinned: list[Pinned] = []
        for item in items:
            name, _, ref = item.partition("@")
            registration = self.get(meta_commit, name)
            if any(p.registration.name == registration.name for p in pinned):
                raise InvalidInput(f"understanding {name!r} is listed twice")
            storage = self.storage_for(registration)
            if not ref:
                commit = self.head(registration, meta_commit)
            else:
                commit = self._resolve_pinned(registration, storage, ref)
                self._require_verified(registration, meta_commit, storage, commit)
            immutable = registration.is_embedded or is_full_sha(ref)
            pinned.append(Pinned(registration, storage, commit, immutable))
        return pinned

    def _resolve_pinned(self, registration: Registration, storage: Storage, ref: str) -> CommitId:
        try:
            return storage.resolve(ref)
        except NotFound:
            if registration.is_embedded:
                raise
        self.fetch(registration)
        try:
            return storage.resolve(ref)
        except NotFound:
            raise NotFound(f"understanding {registration.name!r} has no commit {ref!r}") from None

    def _require_verified(
        self, registration: Registration, meta_commit: CommitId, storage: Storage, commit: CommitId
    ) -> None:
        signers = self.allowed_signers(registration, meta_commit)
        if signers is None:
            return
        verdict = verify_commit(storage, commit, signers)
        if not verdict.verified:
            raise Unverified(
                f"understanding {registration.name!r} commit {commit} is not served: "
                f"{verdict.reason}"
            )

    def layer(self, pinned: Pinned, normalized_name: NormalizedName) -> Layer:
        """Return an understanding's rules for one project at its pinned commit."""
        path = rule_path(pinned.registration.folder, normalized_name)
        blob_id = pinned.storage.blob_id(pinned.commit, path)
        rules = None
        if blob_id is not None:
            rules = self._rule_files(pinned.storage, blob_id, f"{pinned.registration.name}:{path}")
        return Layer(pinned.registration.name, pinned.commit, path, rules, pinned.registration.gate)

    def _parse_rule_file(self, storage: Storage, blob_id: BlobId, where: str) -> RuleFile:
        return RuleFile.from_toml(tomlcodec.loads(storage.read_blob(blob_id), where=where), where)


def is_full_sha(ref: str) -> bool:
    """Return whether a ref is a full 40-hex commit id."""
    return bool(_FULL_SHA.fullmatch(ref))
