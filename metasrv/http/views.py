"""What installers read: project pages with understandings applied, metadata files, wheels."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

from packaging.utils import NormalizedName

from metasrv.errors import InvalidInput, MetadataPending, MetasrvError, NotFound
from metasrv.http.simplepages import SimpleFile, project_page
from metasrv.http.sourcefolder import source_folder_file
from metasrv.http.wheelcache import Rewritten, WheelCache
from metasrv.http.wheels import render_metadata_file
from metasrv.index.archives import is_wheel
from metasrv.model import CoreMetadata, DistFile, MetadataStatus, Project, Release
from metasrv.names import core_metadata_path, name_from_path
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import CommitId
from metasrv.understandings.cooldown import Cooldown, apply_cooldown
from metasrv.understandings.overrides import apply_layers
from metasrv.understandings.registry import Pinned, Understandings

METADATA_SUFFIX = ".metadata"  # PEP 658
COMMIT_FREE_CAPACITY = 100_000  # project files whose plain page is known to name no commit


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
            # "@" and "," percent-encoded: PDM takes a path with "@" for a VCS link and skips it.
            prefix = f"{prefix}/u/{quote(spec, safe='')}"
        if self.cooldown is not None:
            prefix = f"{prefix}/cooldown/{self.cooldown.text}"
        return prefix

    @property
    def key(self) -> str:
        """Return a string that changes whenever what this view shows may change."""
        return hashlib.sha256(self.prefix.encode()).hexdigest()[:20]


class _Located(NamedTuple):
    """A file of a view: where it is, as the data holds it, and as the view shows it."""

    # A tuple, not a frozen dataclass: a page makes one per file, numpy's 4,400 at a time.
    project: Project
    release: Release
    original: DistFile
    patched: DistFile
    hidden: str | None  # why the view does not list it

    @property
    def changed(self) -> bool:
        """Return whether an understanding changed the file's metadata."""
        return self.original.metadata != self.patched.metadata


def _rendered(dist_file: DistFile) -> bool:
    """Return whether a file's .metadata is rendered from its record: a built sdist's is."""
    # An sdist's PKG-INFO is not what a build computed; builds before the build's own document
    # was kept (core-metadata-sha256) are served a rendering of their record.
    return (
        dist_file.metadata_status is MetadataStatus.BUILT and dist_file.core_metadata_sha256 is None
    )


def _ruled_projects(pinned: Pinned) -> list[NormalizedName]:
    """Return the projects an understanding has rule files for, at its pinned commit."""
    storage, folder = pinned.storage, pinned.registration.folder.strip("/")
    tree_id = storage.tree_id(pinned.commit, folder)
    paths = storage.walk_blobs(tree_id) if tree_id is not None else iter(())
    return [name for path, _ in paths if (name := name_from_path(path)) is not None]


def _linked_at_source(located: _Located) -> bool:
    """Return whether a page links a file at the source's own URL: the source serves it as is."""
    # The redirect /files/ would answer with, less a round trip per file (PyPI's pages link its
    # file host too). Files an understanding changed, local ones, and ones whose .metadata this
    # repository holds or reads on request stay here.
    original = located.original
    return (
        not located.changed
        and original.url.startswith(("http://", "https://"))
        and not original.core_metadata_stored
        and not _rendered(original)
        and not (original.metadata_pending and original.core_metadata_sha256 is None)
    )


def _source_serves_metadata(located: _Located, at_source: bool) -> bool:
    """Return whether a pending file's .metadata is the source's document, its hash declared;
    ``at_source``: whether pages link the file at the source (``_linked_at_source``)."""
    # A pending file linked at the source has its hash declared, or it would be linked here.
    return located.original.metadata_pending and at_source


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
        self._prepared: dict[str, str] = {}  # understanding -> the view state last prepared
        self._commit_free: dict[str, bool] = {}  # project file -> its plain page names no commit

    async def prepare_rewrites(self) -> int:
        """Start preparing, in the background, the wheels each understanding's own view rewrites,
        for views whose state (data and understanding commits) is new; return how many started.

        Run after mirrors are refreshed, so pages find them ready; a page of a combination of
        understandings, or one whose wheel the disk cap evicted, starts what it lacks itself.
        """
        started = 0
        try:
            registrations = self.understandings.registrations(self.catalog.storage.resolve(None))
        except MetasrvError:
            return 0  # no served commit yet, or a broken registration: the refresh says why
        for name in registrations:
            try:
                mount = self.mount(None, name)
            except MetasrvError:
                continue  # its routes say why
            if self._prepared.get(name) == mount.key:
                continue
            for normalized_name in _ruled_projects(mount.pinned[0]):
                await asyncio.sleep(0)  # a project at a time: requests are answered between
                try:
                    project = self.catalog.get_project(mount.commit_id, normalized_name)
                    located = [item for item in self._located(mount, project) if not item.hidden]
                except MetasrvError:
                    continue  # an unknown project, a broken rule file: reported where read
                for item in located:
                    metadata = self._rewrite_needed(item)
                    if metadata is not None and self.wheels.ready(item.original, metadata) is None:
                        self.wheels.prepare(item.original, metadata)
                        started += 1
            self._prepared[name] = mount.key
        return started

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

    async def project(self, mount: Mount, name: str) -> tuple[dict[str, Any], int]:
        """Return the PEP 691 page of a project as the view shows it, and how many files it
        leaves out because their rewritten wheels are not ready yet.

        Hidden files are left out. No wheel is downloaded here: missing rewritten wheels are
        started in the background and waited for at most the cache's page wait.
        """
        project = self.catalog.get_project(mount.commit_id, name)
        listed = [located for located in self._located(mount, project) if located.hidden is None]
        jobs = [
            self.wheels.prepare(located.original, metadata)
            for located in listed
            if (metadata := self._rewrite_needed(located)) is not None
            and self.wheels.ready(located.original, metadata) is None
        ]
        if jobs:
            waiting = [asyncio.wrap_future(job) for job in jobs]
            for future in waiting:  # a failed rewrite only leaves its wheel out: retrieved here
                future.add_done_callback(lambda done: done.cancelled() or done.exception())
            await asyncio.wait(waiting, timeout=self.wheels.page_wait_seconds)
        files, shown, left_out = [], set(), 0
        for located in listed:
            simple_file = self._simple_file(mount, located)
            if simple_file is None:
                left_out += 1  # its link appears once its rewritten wheel is ready
                continue
            files.append(simple_file)
            shown.add(located.release.version_text)
        # A release whose every file the view hides is left out of PEP 700's versions too.
        versions = [
            r.version_text for r in project.releases if r.version_text in shown or not r.files
        ]
        return project_page(project.normalized_name, versions, files), left_out

    def commit_free(self, mount: Mount, name: str, blob_id: str) -> bool:
        """Return whether the view's page of a project (its file ``blob_id``) names no commit:
        the plain view of a project whose files are all linked at the source."""
        if mount.pinned or mount.cooldown is not None:
            return False
        free = self._commit_free.get(blob_id)
        if free is None:
            project = self.catalog.get_project(mount.commit_id, name)
            free = all(map(_linked_at_source, self._located(mount, project)))
            if len(self._commit_free) >= COMMIT_FREE_CAPACITY:
                self._commit_free.clear()  # a few bytes each; only a shortcut
            self._commit_free[blob_id] = free
        return free

    def _simple_file(self, mount: Mount, located: _Located) -> SimpleFile | None:
        patched = located.patched
        at_source = _linked_at_source(located)
        if at_source:
            url = located.original.url
        else:
            prefix = mount.prefix if located.changed else mount.data_prefix
            if self.pending_metadata and located.original.metadata_pending:
                # Its .metadata is read from the source on request, which a pinned URL never does.
                prefix = mount.root
            url = f"{prefix}/files/{located.project.normalized_name}/{quote(patched.filename)}"
        hashes, size = dict(patched.hashes), patched.size
        rewritten = None
        metadata = self._rewrite_needed(located)
        if metadata is not None:
            rewritten = self.wheels.ready(located.original, metadata)
            if rewritten is None:
                return None
            hashes, size = {"sha256": rewritten.sha256}, rewritten.size
        metadata_sha256 = self._metadata_sha256(located, rewritten, at_source)
        return SimpleFile(
            filename=patched.filename,
            url=url,
            hashes=hashes,
            requires_python=patched.requires_python,
            yanked=patched.yanked,
            size=size,
            upload_time=patched.upload_time,
            metadata_sha256=metadata_sha256,
            metadata_pending=(
                self.pending_metadata
                and located.original.metadata_pending
                and is_wheel(patched.filename)
            ),
        )

    @staticmethod
    def _rewrite_needed(located: _Located) -> CoreMetadata | None:
        """Return the metadata a file's wheel is rewritten with, or None when it is served as is."""
        metadata = located.patched.metadata
        if not located.changed or metadata is None or not is_wheel(located.patched.filename):
            return None
        return metadata

    async def _rewritten(self, located: _Located) -> Rewritten | None:
        """Return the rewritten wheel a file is served as (one wheel, prepared off the loop)."""
        metadata = self._rewrite_needed(located)
        return None if metadata is None else await self.wheels.get(located.original, metadata)

    def _metadata_sha256(
        self, located: _Located, rewritten: Rewritten | None, at_source: bool
    ) -> str | None:
        """Return the sha256 of the .metadata a file is served with, or None when it has none;
        ``at_source``: whether the page links the file at the source."""
        if _source_serves_metadata(located, at_source):
            return located.original.core_metadata_sha256
        if not located.changed and not _rendered(located.original):
            original = located.original
            # PEP 658: the document as in the file; a file whose document sync did not see has none.
            return original.core_metadata_sha256 if original.metadata is not None else None
        content = self._changed_metadata(located, rewritten)
        return None if content is None else hashlib.sha256(content).hexdigest()

    def _changed_metadata(self, located: _Located, rewritten: Rewritten | None) -> bytes | None:
        """Return the METADATA of a file an understanding changed, or of a built sdist."""
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

    async def metadata_file(self, mount: Mount, name: str, filename: str) -> bytes | str:
        """Return a file's PEP 658 metadata as the view shows it, or the source URL serving it."""
        located = self._find(mount, name, filename)
        if located.original.metadata_pending:
            if _source_serves_metadata(located, _linked_at_source(located)):
                # The page named the source's own document by its hash: no need to read it first.
                return located.original.url + METADATA_SUFFIX
            raise MetadataPending(
                f"the metadata of {filename!r} is not read yet", located.release.version_text
            )
        if located.changed or _rendered(located.original):
            content = self._changed_metadata(located, await self._rewritten(located))
            if content is None:
                raise NotFound(f"the metadata of {filename!r} is not known")
            return content
        original = located.original
        if original.metadata is None or original.core_metadata_sha256 is None:
            raise NotFound(f"{filename!r} has no metadata file")
        if not original.core_metadata_stored:
            return original.url + METADATA_SUFFIX
        path = core_metadata_path(original.core_metadata_sha256)
        stored = self.catalog.storage.read(mount.commit_id, path)
        if stored is None:
            raise NotFound(f"{path} is missing from the meta repository")
        return stored

    async def file(self, mount: Mount, name: str, filename: str) -> str | Path:
        """Return where a file's bytes are: an http(s) URL, or a file on this machine."""
        located = self._find(mount, name, filename)
        rewritten = await self._rewritten(located)
        if rewritten is not None:
            return rewritten.path
        url = located.original.url
        if url.startswith(("http://", "https://")):
            return url
        # Clients cannot follow a redirect to file://; the source's own files are streamed.
        return source_folder_file(self.catalog.config(mount.commit_id).source_url, url)
