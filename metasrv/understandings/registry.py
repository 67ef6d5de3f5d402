"""Registered understandings: their mirrors, their rule files, and the layers a client opts into."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent import futures
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from packaging.utils import NormalizedName

from metasrv.config import MetaConfig
from metasrv.errors import (
    InvalidData,
    InvalidInput,
    MetasrvError,
    NotAllowed,
    NotFound,
    SourceError,
    Unavailable,
    Unverified,
)
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import CONFIG_PATH
from metasrv.repo.storage import BlobId, CommitId, Storage
from metasrv.understandings.mirrors import Deadlines, Mirrors, MirrorStatus, git_url, is_allowed
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
# A pin to a commit the mirror lacks fetches at most this often per understanding.
PIN_FETCH_INTERVAL_SECONDS = 10.0
# The repositories understandings may be cloned from when metasrv.toml does not say.
DEFAULT_UNDERSTANDINGS_ALLOW = ("https://",)
_FULL_SHA = re.compile(r"[0-9a-f]{40}")


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
    """The understandings a meta repository registers, read at whichever commit is served.

    Readers never touch the network: mirrors are cloned and fetched on worker threads under
    deadlines (``refresh_all``, ``prepare``), and a reader finds a mirror ready or is told to
    retry (503), with the reason the last refresh gave.
    """

    def __init__(
        self,
        meta: Storage,
        mirrors: Path | None = None,
        *,
        deadlines: Deadlines | None = None,
        pin_fetch_interval: float = PIN_FETCH_INTERVAL_SECONDS,
    ) -> None:
        self.meta = meta
        self.deadlines = deadlines or Deadlines()
        self.mirrors = Mirrors(mirrors or meta.path / "metasrv-mirrors", self.deadlines)
        self.status = self.mirrors.status
        self.pin_fetch_interval = pin_fetch_interval
        self._registrations = lru_cache(maxsize=64)(self._read_registrations)
        self._rule_files = lru_cache(maxsize=1024)(self._parse_rule_file)
        self._last_verified: dict[tuple[str, bytes], CommitId] = {}
        self._configs = lru_cache(maxsize=8)(self._read_config)
        self._pin_fetches: dict[str, float] = {}  # when an unseen pin last caused a fetch

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

    def allowed(self) -> tuple[str, ...]:
        """Return the repository prefixes the served branch's ``metasrv.toml`` allows now."""
        blob_id = self.meta.blob_id(self.meta.resolve(None), CONFIG_PATH)
        return DEFAULT_UNDERSTANDINGS_ALLOW if blob_id is None else self._configs(blob_id)

    def _read_config(self, blob_id: BlobId) -> tuple[str, ...]:
        document = tomlcodec.loads(self.meta.read_blob(blob_id), where=CONFIG_PATH)
        allow = MetaConfig.from_toml(document, CONFIG_PATH).understandings_allow
        return DEFAULT_UNDERSTANDINGS_ALLOW if allow is None else allow

    def check_allowed(self, registration: Registration) -> None:
        """Raise NotAllowed unless the operator allows mirroring this registration's repository."""
        if registration.is_embedded or is_allowed(registration.repository, self.allowed()):
            return
        # Only the registration's own text is echoed: nothing was read from the repository.
        raise NotAllowed(
            f"understanding {registration.name!r}: repository {registration.repository[:200]!r} "
            f"is not in {CONFIG_PATH} [understandings] allow"
        )

    def storage_for(self, registration: Registration) -> Storage:
        """Return the repository an understanding's rules live in; never waits on a network."""
        if registration.is_embedded:
            return self.meta
        self.check_allowed(registration)
        storage = self.mirrors.open(registration.name)
        status = self.status.get(registration.name)
        reason = status.error if status is not None and status.error else "being cloned"
        if storage is None:
            raise Unavailable(f"understanding {registration.name!r} is not mirrored yet: {reason}")
        if self.mirrors.origin(registration.name) != git_url(registration.repository):
            # Never serve the old repository's rules under the new registration.
            raise Unavailable(
                f"understanding {registration.name!r} moved to another repository, "
                f"not mirrored yet: {reason}"
            )
        return storage

    def refresh(self, registration: Registration) -> Future[None] | None:
        """Start cloning or fetching a mirror in the background (joined if already running)."""
        if registration.is_embedded:
            return None
        try:
            self.check_allowed(registration)
        except NotAllowed as exc:
            self.status.setdefault(registration.name, MirrorStatus()).error = exc.message
            return None
        meta_commit = self.meta.resolve(None)

        def verify() -> None:
            with suppress(SourceError, InvalidData, InvalidInput, NotFound):
                self._verify_fetched(registration, meta_commit)  # requests report failures

        return self.mirrors.refresh(registration.name, git_url(registration.repository), verify)

    def refresh_all(self, meta_commit: CommitId) -> list[Future[None]]:
        """Refresh every registered mirror in parallel; each one fails on its own."""
        jobs = [self.refresh(r) for r in self.registrations(meta_commit).values()]
        return [job for job in jobs if job is not None]

    def needed(self, meta_commit: CommitId, spec: str) -> list[Future[None]]:
        """Return the refreshes a read of ``spec`` waits for: missing mirrors, unseen pins.

        A pin to an unseen commit fetches at most once per ``pin_fetch_interval`` per
        understanding (random shas cost one fetch, not one each); errors are left to ``pin``.
        """
        jobs = []
        current = self.registrations(self.meta.resolve(None))
        # Unregistered names are skipped: the work is bounded by the registrations.
        for item in spec.split(","):
            name, _, ref = item.strip().partition("@")
            try:
                registration = self.get(meta_commit, name)
            except MetasrvError:
                continue
            # Mirrors follow the served branch's registration (its repository may have moved).
            registration = current.get(registration.name, registration)
            if registration.is_embedded or not self._needs_refresh(registration, ref):
                continue
            job = self.refresh(registration)
            if job is not None:
                jobs.append(job)
        return jobs

    def _needs_refresh(self, registration: Registration, ref: str) -> bool:
        try:
            storage = self.storage_for(registration)
        except Unavailable:
            return True  # missing, unreadable, or cloned from the old repository
        except MetasrvError:
            return False
        if not ref or self._has_commit(storage, ref):
            return False
        if self.mirrors.is_refreshing(registration.name):
            return True  # join it: the commit may be on its way
        last = self._pin_fetches.get(registration.name)
        if last is not None and time.monotonic() - last < self.pin_fetch_interval:
            return False
        self._pin_fetches[registration.name] = time.monotonic()
        return True

    @staticmethod
    def _has_commit(storage: Storage, ref: str) -> bool:
        try:
            storage.resolve(ref)
        except NotFound:
            return False
        except MetasrvError:
            return True  # a malformed ref: nothing to fetch, pin reports it
        return True

    async def prepare(self, meta_commit: CommitId, spec: str) -> None:
        """Wait (off the loop, at most the request wait) for the refreshes a read needs, then
        check its signatures off the loop too, so that ``pin`` finds their verdicts cached."""
        jobs = self.needed(meta_commit, spec)
        if jobs:
            waiting = [asyncio.wrap_future(job) for job in jobs]
            await asyncio.wait(waiting, timeout=self.deadlines.request_wait_seconds)
        signed = self._signed(meta_commit, spec)
        if signed:
            await asyncio.to_thread(self._verify_pins, meta_commit, signed)

    def _signed(self, meta_commit: CommitId, spec: str) -> list[tuple[Registration, str]]:
        """Return the items of ``spec`` whose registration names allowed signers."""
        signed = []
        for item in spec.split(",")[:MAX_UNDERSTANDINGS_PER_REQUEST]:
            name, _, ref = item.strip().partition("@")
            with suppress(MetasrvError):  # pin reports what is wrong with the list
                registration = self.get(meta_commit, name)
                if registration.allowed_signers is not None and not registration.is_embedded:
                    signed.append((registration, ref))
        return signed

    def _verify_pins(self, meta_commit: CommitId, signed: list[tuple[Registration, str]]) -> None:
        """Verify the commits a read pins (ssh-keygen, one process each) into the shared cache."""
        for registration, ref in signed:
            with suppress(MetasrvError):  # pin reports failures, on the loop, from the cache
                if not ref:
                    self._verify_fetched(registration, meta_commit)  # its branch's head
                    continue
                signers = self.allowed_signers(registration, meta_commit)
                assert signers is not None
                # A handle of this thread's own; the verdicts land in a cache requests share.
                mirror = Storage(self.mirrors.path(registration.name))
                verify_commit(mirror, mirror.resolve(ref), signers)

    def prepare_blocking(self, meta_commit: CommitId, spec: str) -> None:
        """Wait for the refreshes a read needs, for a command line that may block."""
        futures.wait(self.needed(meta_commit, spec), timeout=self.deadlines.whole_seconds)

    def _verify_fetched(self, registration: Registration, meta_commit: CommitId) -> None:
        """Verify a fetched branch's new commits here, so no request waits on ssh-keygen."""
        signers = self.allowed_signers(registration, meta_commit)
        if signers is None:
            return
        # A handle of its own, as for the fetch; the verdicts land in a cache requests share.
        mirror = Storage(self.mirrors.path(registration.name))
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
        """Resolve ``name[@ref],...`` in client order, from the mirrors as they are."""
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
        status = self.status.get(registration.name)
        if status is not None and status.error:
            # The commit may exist where we cannot reach: a failing source is never a 404.
            raise Unavailable(
                f"understanding {registration.name!r}: commit {ref!r} is not mirrored and the "
                f"last fetch failed: {status.error}"
            )
        raise NotFound(f"understanding {registration.name!r} has no commit {ref!r}")

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
