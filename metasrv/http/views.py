"""What installers read: project pages with understandings applied, metadata files, wheels."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from packaging.utils import NormalizedName

from metasrv.errors import InvalidInput, MetadataPending, MetasrvError, NotFound, SourceError
from metasrv.http.simplepages import SimpleFile, project_page
from metasrv.http.wheels import render_metadata_file, rewrite_wheel
from metasrv.index.archives import is_wheel
from metasrv.index.client import Fetcher, FetchOptions, make_client
from metasrv.model import CoreMetadata, DistFile, Project, Release
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import CommitId
from metasrv.understandings.cooldown import Cooldown, apply_cooldown
from metasrv.understandings.overrides import apply_layers
from metasrv.understandings.registry import Pinned, Understandings

# A wheel an understanding changed is downloaded and rewritten once; larger ones are refused.
MAX_PATCHED_WHEEL_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Mount:
    """One view installers read: a data commit and the understandings applied, all pinned."""

    commit_id: CommitId
    pinned: tuple[Pinned, ...]
    immutable: bool
    root: str  # where the app is mounted (ASGI root_path)
    cooldown: Cooldown | None = None
    commit_time: datetime | None = None  # the data commit's own time, which cooldowns count from

    @property
    def data_prefix(self) -> str:
        """Return the pinned URL prefix of files no understanding changed."""
        return f"{self.root}/at/{self.commit_id}"

    @property
    def prefix(self) -> str:
        """Return the pinned URL prefix of this whole view."""
        prefix = self.data_prefix
        if self.pinned:
            spec = ",".join(f"{p.registration.name}@{p.commit}" for p in self.pinned)
            prefix = f"{prefix}/u/{quote(spec, safe='@,')}"
        if self.cooldown is not None:
            prefix = f"{prefix}/cooldown/{self.cooldown.text}"
        return prefix

    @property
    def key(self) -> str:
        """Return a string that changes whenever what this view shows may change."""
        return hashlib.sha256(self.prefix.encode()).hexdigest()[:20]


@dataclass(frozen=True, slots=True)
class Rewritten:
    """A rewritten wheel on disk, its sha256, and its METADATA."""

    path: Path
    sha256: str
    size: int
    metadata: bytes


class WheelCache:
    """Rewritten wheels, computed on first request and kept on disk by what they are made of.

    ``<key>.sha256`` is written last, so its presence means the wheel and its METADATA are
    complete; the digest is then read, never recomputed.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._known: dict[str, Rewritten] = {}

    async def get(self, dist_file: DistFile, metadata: CoreMetadata) -> Rewritten:
        """Return ``dist_file`` rewritten with ``metadata``, downloading it the first time."""
        original = dist_file.hashes.get("sha256")
        if original is None:
            raise SourceError(f"{dist_file.filename}: no sha256 to verify the original against")
        recipe = json.dumps(
            [original, metadata.requires_dist, metadata.requires_python, metadata.provides_extra]
        )
        key = hashlib.sha256(recipe.encode()).hexdigest()
        known = self._known.get(key)
        if known is not None:
            return known
        wheel_path, digest_path = self.folder / f"{key}.whl", self.folder / f"{key}.sha256"
        metadata_path = self.folder / f"{key}.metadata"
        if not digest_path.exists():
            content = await _download(dist_file.url, original)
            rewritten, new_metadata = await asyncio.to_thread(rewrite_wheel, content, metadata)
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(metadata_path, new_metadata)
            _write_atomically(wheel_path, rewritten)
            _write_atomically(digest_path, hashlib.sha256(rewritten).hexdigest().encode())
        known = Rewritten(
            wheel_path,
            digest_path.read_text(),
            wheel_path.stat().st_size,
            metadata_path.read_bytes(),
        )
        self._known[key] = known
        return known


async def _download(url: str, sha256: str) -> bytes:
    options = FetchOptions(timeout_seconds=60)
    async with make_client(options) as client:
        response = await Fetcher(client, options).get(url, max_bytes=MAX_PATCHED_WHEEL_BYTES)
    if response.status_code != 200:
        raise SourceError(f"{url}: HTTP {response.status_code}")
    if hashlib.sha256(response.content).hexdigest() != sha256:
        raise SourceError(f"{url}: the downloaded wheel's sha256 is not the one on record")
    return response.content


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content)
    temporary.replace(path)


@dataclass(frozen=True, slots=True)
class _Located:
    project: Project
    release: Release
    original: DistFile
    patched: DistFile
    hidden: str | None  # why the view does not list it

    @property
    def changed(self) -> bool:
        """Return whether an understanding changed the file's metadata."""
        return self.original.metadata != self.patched.metadata


class SimpleApi:
    """The simple API over a catalog, with understandings and rewritten wheels."""

    def __init__(
        self,
        catalog: Catalog,
        understandings: Understandings,
        wheels: WheelCache,
        *,
        pending_metadata: bool = False,
    ) -> None:
        self.catalog = catalog
        self.understandings = understandings
        self.wheels = wheels
        # With pull-through, a wheel's metadata not read yet is offered and read on request.
        self.pending_metadata = pending_metadata

    async def prepare(self, at: str | None, spec: str) -> None:
        """Wait, off the loop and within a bound, for the mirror refreshes a view needs."""
        try:
            commit_id = self.catalog.storage.resolve(at)
        except MetasrvError:
            return  # mount reports it
        await self.understandings.prepare(commit_id, spec)

    def mount(
        self, at: str | None, spec: str | None, root: str = "", cooldown: str | None = None
    ) -> Mount:
        """Resolve a view: ``at`` (None: the served branch now), understandings, a cooldown."""
        storage = self.catalog.storage
        commit_id = storage.resolve(at)
        if at is not None and not at:
            raise InvalidInput("empty commit in the URL")
        pinned = tuple(self.understandings.pin(commit_id, spec)) if spec is not None else ()
        immutable = at is not None and at == commit_id and all(p.immutable for p in pinned)
        if cooldown is None:
            return Mount(commit_id, pinned, immutable, root)
        commit_time = datetime.fromtimestamp(storage.commit_time(commit_id), UTC)
        return Mount(commit_id, pinned, immutable, root, Cooldown.from_text(cooldown), commit_time)

    def names(self, mount: Mount) -> dict[NormalizedName, str]:
        """Return every project of the view (understandings do not add or remove projects)."""
        return self.catalog.list_projects(mount.commit_id)

    def _located(self, mount: Mount, project: Project) -> Iterator[_Located]:
        layers = [self.understandings.layer(p, project.normalized_name) for p in mount.pinned]
        for release in project.releases:
            if not layers and mount.cooldown is None:
                for dist_file in release.files:
                    yield _Located(project, release, dist_file, dist_file, None)
                continue
            patched = apply_layers(release, layers)
            if mount.cooldown is not None and mount.commit_time is not None:
                patched = apply_cooldown(patched, mount.cooldown, mount.commit_time)
            hidden = patched.hidden_reasons
            for original, patched_file in zip(release.files, patched.release.files, strict=True):
                reason = hidden.get(original.filename)
                yield _Located(project, release, original, patched_file, reason)

    async def project(self, mount: Mount, name: str) -> dict[str, Any]:
        """Return the PEP 691 page of a project as the view shows it: hidden files left out."""
        project = self.catalog.get_project(mount.commit_id, name)
        files, shown = [], set()
        for located in self._located(mount, project):
            if located.hidden is None:
                files.append(await self._simple_file(mount, located))
                shown.add(located.release.version_text)
        # A release whose every file the view hides is left out of PEP 700's versions too.
        versions = [
            r.version_text for r in project.releases if r.version_text in shown or not r.files
        ]
        return project_page(project.normalized_name, versions, files)

    async def _simple_file(self, mount: Mount, located: _Located) -> SimpleFile:
        patched = located.patched
        prefix = mount.prefix if located.changed else mount.data_prefix
        url = f"{prefix}/files/{located.project.normalized_name}/{quote(patched.filename)}"
        hashes, size = dict(patched.hashes), patched.size
        rewritten = await self._rewritten(located)
        if rewritten is not None:
            hashes, size = {"sha256": rewritten.sha256}, rewritten.size
        metadata_bytes = self._metadata_bytes(located, rewritten)
        return SimpleFile(
            filename=patched.filename,
            url=url,
            hashes=hashes,
            requires_python=patched.requires_python,
            yanked=patched.yanked,
            size=size,
            upload_time=patched.upload_time,
            metadata_sha256=(
                hashlib.sha256(metadata_bytes).hexdigest() if metadata_bytes is not None else None
            ),
            metadata_pending=(
                self.pending_metadata
                and located.original.metadata_pending
                and is_wheel(patched.filename)
            ),
        )

    async def _rewritten(self, located: _Located) -> Rewritten | None:
        """Return the rewritten wheel a file is served as, or None when it is served as is."""
        metadata = located.patched.metadata
        if not located.changed or metadata is None or not is_wheel(located.patched.filename):
            return None
        return await self.wheels.get(located.original, metadata)

    def _metadata_bytes(self, located: _Located, rewritten: Rewritten | None) -> bytes | None:
        if rewritten is not None:
            return rewritten.metadata
        metadata = located.patched.metadata
        if metadata is None:
            return None
        return render_metadata_file(located.project.name, located.release.version_text, metadata)

    def _find(self, mount: Mount, name: str, filename: str) -> _Located:
        for located in self._located(mount, self.catalog.get_project(mount.commit_id, name)):
            if located.patched.filename == filename:
                if located.hidden is not None:
                    raise NotFound(f"{filename!r} is hidden in this view: {located.hidden}")
                return located
        raise NotFound(f"no file {filename!r} of project {name!r}")

    def needs_metadata(self, mount: Mount, name: str) -> bool:
        """Return whether an understanding's rules may select releases whose metadata is pending."""
        if not mount.pinned:
            return False
        project = self.catalog.get_project(mount.commit_id, name)
        if not any(f.metadata_pending for r in project.releases for f in r.files):
            return False
        layers = [self.understandings.layer(p, project.normalized_name) for p in mount.pinned]
        return any(layer.rules is not None for layer in layers)

    async def metadata_file(self, mount: Mount, name: str, filename: str) -> bytes:
        """Return a file's PEP 658 metadata as the view shows it."""
        located = self._find(mount, name, filename)
        if located.original.metadata_pending:
            raise MetadataPending(
                f"the metadata of {filename!r} is not read yet", located.release.version_text
            )
        content = self._metadata_bytes(located, await self._rewritten(located))
        if content is None:
            raise NotFound(f"the metadata of {filename!r} is not known")
        return content

    async def file(self, mount: Mount, name: str, filename: str) -> str | Path:
        """Return where a file's bytes are: the source's URL, or a rewritten wheel on disk."""
        located = self._find(mount, name, filename)
        rewritten = await self._rewritten(located)
        return located.original.url if rewritten is None else rewritten.path
