"""Frozen records of a project's releases, files and core metadata, and their TOML form; no I/O."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any

from packaging.utils import NormalizedName
from packaging.version import Version

from metasrv.errors import InvalidData, InvalidInput
from metasrv.names import normalize_name, parse_version
from metasrv.tables import DATA_FORMAT_VERSION, TableReader

Yanked = bool | str
"""PEP 592 / PEP 691: False, True, or the reason it was yanked."""


@dataclass(frozen=True, slots=True)
class CoreMetadata:
    """The core metadata fields a resolver reads."""

    metadata_version: str
    requires_dist: tuple[str, ...] = ()
    requires_python: str | None = None
    provides_extra: tuple[str, ...] = ()
    dynamic: tuple[str, ...] = ()

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], where: str) -> CoreMetadata:
        """Build from a ``metadata`` table of a project file."""
        reader = TableReader(table, where)
        metadata = cls(
            metadata_version=reader.string("metadata-version"),
            requires_dist=reader.strings("requires-dist"),
            requires_python=reader.optional_string("requires-python"),
            provides_extra=reader.strings("provides-extra"),
            dynamic=reader.strings("dynamic"),
        )
        reader.reject_unknown()
        return metadata

    def to_toml(self) -> dict[str, Any]:
        """Return the ``metadata`` table, omitting empty optional keys."""
        table: dict[str, Any] = {"metadata-version": self.metadata_version}
        if self.requires_python is not None:
            table["requires-python"] = self.requires_python
        for key, values in (
            ("requires-dist", self.requires_dist),
            ("provides-extra", self.provides_extra),
            ("dynamic", self.dynamic),
        ):
            if values:
                table[key] = list(values)
        return table


class MetadataStatus(StrEnum):
    """Why a file's core metadata is not simply known (data/README.md: "Metadata status")."""

    PENDING = "pending"  # not read yet (pull-through reads it on first request)
    SKIPPED = "skipped"  # a note: an sdist beside wheels, not read
    DYNAMIC = "dynamic"  # an sdist that does not declare its metadata statically: needs a build
    BUILT = "built"  # computed by a sandboxed build; the file has metadata and metadata-built-on
    BUILD_FAILED = "build-failed"
    FETCH_FAILED = "fetch-failed"  # the source did not answer; the next sync reads it again
    UNUSABLE = "unusable"  # corrupt, hash mismatch, oversized; kept while its hash is unchanged

    @property
    def gives_metadata(self) -> bool:
        """Return whether a file of this status has core metadata of its own."""
        return self is MetadataStatus.BUILT


# Format 1 wrote one free-text `metadata-error`; these are the texts sync wrote, by status,
# each with the part of the text that is not the reason.
_FORMAT_1_PREFIXES = (
    ("fetch failed: ", MetadataStatus.FETCH_FAILED, "fetch failed: "),
    ("not read: the release's wheels", MetadataStatus.SKIPPED, "not read: "),
    ("not read", MetadataStatus.PENDING, ""),
)


def status_of_format_1_error(error: str) -> tuple[MetadataStatus, str]:
    """Return the status and reason a format 1 ``metadata-error`` text stands for."""
    for prefix, status, not_reason in _FORMAT_1_PREFIXES:
        if error.startswith(prefix):
            return status, error.removeprefix(not_reason)
    if error.startswith("sdist metadata ") and error.endswith(" does not declare static fields"):
        return MetadataStatus.DYNAMIC, error
    return MetadataStatus.UNUSABLE, error


@dataclass(frozen=True, slots=True)
class DistFile:
    """One distribution file of a release, with its own effective core metadata."""

    filename: str
    url: str
    hashes: Mapping[str, str]
    size: int | None = None
    upload_time: str | None = None
    requires_python: str | None = None
    yanked: Yanked = False
    metadata: CoreMetadata | None = None
    metadata_status: MetadataStatus | None = None
    metadata_reason: str | None = None
    metadata_built_on: str | None = None
    core_metadata_sha256: str | None = None
    core_metadata_stored: bool = False

    @classmethod
    def from_toml(
        cls,
        table: Mapping[str, Any],
        where: str,
        inherited: CoreMetadata | None,
        format_version: int = DATA_FORMAT_VERSION,
    ) -> DistFile:
        """Build from a ``files`` entry, inheriting ``inherited`` unless it says otherwise."""
        reader = TableReader(table, where)
        status, reason = _read_status(reader, where, format_version)
        built_on = reader.optional_string("metadata-built-on")
        own_metadata = reader.optional_table("metadata")
        if own_metadata is not None:
            metadata: CoreMetadata | None = CoreMetadata.from_toml(
                own_metadata, f"{where}.metadata"
            )
        else:
            metadata = None if status is not None else inherited
        if status is MetadataStatus.BUILT and (own_metadata is None or built_on is None):
            raise InvalidData(f"{where}: a built file needs 'metadata' and 'metadata-built-on'")
        if status is not None and not status.gives_metadata and own_metadata is not None:
            raise InvalidData(f"{where}: a file whose metadata is {status} has no 'metadata'")
        if built_on is not None and status is not MetadataStatus.BUILT:
            raise InvalidData(f"{where}: 'metadata-built-on' belongs to a built file")
        dist_file = cls(
            filename=reader.string("filename"),
            url=reader.string("url"),
            hashes=reader.string_table("hashes"),
            size=reader.optional_integer("size"),
            upload_time=reader.optional_string("upload-time"),
            requires_python=reader.optional_string("requires-python"),
            yanked=reader.yanked("yanked"),
            metadata=metadata,
            metadata_status=status,
            metadata_reason=reason,
            metadata_built_on=built_on,
            core_metadata_sha256=reader.optional_string("core-metadata-sha256"),
            core_metadata_stored=reader.boolean("core-metadata-stored", default=False),
        )
        reader.reject_unknown()
        if dist_file.core_metadata_stored and dist_file.core_metadata_sha256 is None:
            raise InvalidData(f"{where}: 'core-metadata-stored' without 'core-metadata-sha256'")
        return dist_file

    @property
    def metadata_pending(self) -> bool:
        """Return whether the file's metadata has not been read yet (pull-through)."""
        return self.metadata_status is MetadataStatus.PENDING

    def to_toml(self, common: CoreMetadata | None) -> dict[str, Any]:
        """Return the ``files`` entry; metadata is written only where it differs from ``common``."""
        table: dict[str, Any] = {"filename": self.filename, "url": self.url}
        table["hashes"] = dict(sorted(self.hashes.items()))
        if self.size is not None:
            table["size"] = self.size
        if self.upload_time is not None:
            table["upload-time"] = self.upload_time
        if self.requires_python is not None:
            table["requires-python"] = self.requires_python
        if self.yanked is not False:
            table["yanked"] = self.yanked
        if self.metadata_status is not None:
            table["metadata-status"] = str(self.metadata_status)
        if self.metadata_reason is not None:
            table["metadata-reason"] = self.metadata_reason
        if self.metadata_built_on is not None:
            table["metadata-built-on"] = self.metadata_built_on
        if self.core_metadata_sha256 is not None:
            table["core-metadata-sha256"] = self.core_metadata_sha256
        if self.core_metadata_stored:
            table["core-metadata-stored"] = True
        # A built file always states its metadata: a file with a status inherits none.
        built = self.metadata_status is MetadataStatus.BUILT
        if self.metadata is not None and (self.metadata != common or built):
            table["metadata"] = self.metadata.to_toml()
        return table


def _read_status(
    reader: TableReader, where: str, format_version: int
) -> tuple[MetadataStatus | None, str | None]:
    """Return a file's metadata status and reason; format 1 spelled both as ``metadata-error``."""
    if format_version == 1:
        error = reader.optional_string("metadata-error")
        return (None, None) if error is None else status_of_format_1_error(error)
    status_text = reader.optional_string("metadata-status")
    reason = reader.optional_string("metadata-reason")
    if status_text is None:
        if reason is not None:
            raise InvalidData(f"{where}: 'metadata-reason' without 'metadata-status'")
        return None, None
    try:
        return MetadataStatus(status_text), reason
    except ValueError:
        known = ", ".join(status.value for status in MetadataStatus)
        raise InvalidData(
            f"{where}: unknown metadata-status {status_text!r} (expected one of {known})"
        ) from None


@dataclass(frozen=True, slots=True)
class Release:
    """One version of a project and its files."""

    version: Version
    version_text: str
    files: tuple[DistFile, ...] = ()
    metadata: CoreMetadata | None = None

    @property
    def yanked(self) -> Yanked:
        """Return the release's yank: yanked when every file is (PEP 592), with the first reason."""
        if not self.files or not all(dist_file.yanked for dist_file in self.files):
            return False
        reasons = [f.yanked for f in self.files if isinstance(f.yanked, str)]
        return reasons[0] if reasons else True

    @property
    def requires_python(self) -> str | None:
        """Return the release's Requires-Python as its metadata states it."""
        return self.metadata.requires_python if self.metadata is not None else None

    @classmethod
    def from_files(
        cls, version_text: str, files: tuple[DistFile, ...], version: Version | None = None
    ) -> Release:
        """Build a release whose common metadata is what most of its files agree on.

        ``version`` is ``version_text`` parsed, when the caller has it already.
        """
        return cls(
            version=parse_version(version_text) if version is None else version,
            version_text=version_text,
            files=tuple(sorted(files, key=lambda dist_file: dist_file.filename)),
            metadata=_most_common_metadata(files),
        )


@dataclass(frozen=True, slots=True)
class SourceState:
    """What the source said of a project page last time, for a conditional request next time."""

    etag: str | None = None
    last_modified: str | None = None
    serial: int | None = None


@dataclass(frozen=True, slots=True)
class Project:
    """A project as registered, with its releases in PEP 440 order."""

    name: str
    normalized_name: NormalizedName
    releases: tuple[Release, ...] = field(default=())
    source_state: SourceState = field(default=SourceState())

    def find_release(self, version: Version) -> Release | None:
        """Return the release whose version is PEP 440 equal to ``version``."""
        for release in self.releases:
            if release.version == version:
                return release
        return None

    @classmethod
    def create(
        cls, name: str, releases: list[Release], source_state: SourceState | None = None
    ) -> Project:
        """Build a project, ordering releases and rejecting two spellings of one version."""
        ordered = tuple(sorted(releases, key=lambda release: release.version))
        for earlier, later in pairwise(ordered):
            if earlier.version == later.version:
                raise InvalidData(
                    f"{name}: {earlier.version_text!r} and {later.version_text!r} are equal"
                )
        return cls(name, normalize_name(name), ordered, source_state or SourceState())

    @classmethod
    def from_toml(cls, document: Mapping[str, Any], where: str) -> Project:
        """Build from a parsed project file; ``where`` names it in errors."""
        reader = TableReader(document, where)
        format_version = reader.require_format((1, DATA_FORMAT_VERSION))
        name = reader.string("name")
        source_state = SourceState(
            etag=reader.optional_string("source-etag"),
            last_modified=reader.optional_string("source-last-modified"),
            serial=reader.optional_integer("source-serial"),
        )
        releases = []
        for version_text, release_table in reader.table("releases").items():
            release_where = f"{where}: releases.{version_text!r}"
            if not isinstance(release_table, Mapping):
                raise InvalidData(f"{release_where}: expected a table")
            release_reader = TableReader(release_table, release_where)
            metadata_table = release_reader.optional_table("metadata")
            metadata = (
                CoreMetadata.from_toml(metadata_table, f"{release_where}.metadata")
                if metadata_table is not None
                else None
            )
            files = tuple(
                DistFile.from_toml(
                    file_table, f"{release_where}.files[{index}]", metadata, format_version
                )
                for index, file_table in enumerate(release_reader.tables("files"))
            )
            release_reader.reject_unknown()
            try:
                version = parse_version(version_text)
            except InvalidInput as exc:
                raise InvalidData(f"{release_where}: {exc.message}") from None
            releases.append(Release(version, version_text, files, metadata))
        reader.reject_unknown()
        try:
            return cls.create(name, releases, source_state)
        except InvalidInput as exc:
            raise InvalidData(f"{where}: {exc.message}") from None

    def to_toml(self) -> dict[str, Any]:
        """Return the canonical document: releases in PEP 440 order, files by filename."""
        releases: dict[str, Any] = {}
        for release in self.releases:
            release_table: dict[str, Any] = {}
            if release.metadata is not None:
                release_table["metadata"] = release.metadata.to_toml()
            release_table["files"] = [f.to_toml(release.metadata) for f in release.files]
            releases[release.version_text] = release_table
        document: dict[str, Any] = {"format": DATA_FORMAT_VERSION, "name": self.name}
        for key, value in (
            ("source-etag", self.source_state.etag),
            ("source-last-modified", self.source_state.last_modified),
            ("source-serial", self.source_state.serial),
        ):
            if value is not None:
                document[key] = value
        document["releases"] = releases
        return document


def _most_common_metadata(files: tuple[DistFile, ...]) -> CoreMetadata | None:
    counts = Counter(f.metadata for f in files if f.metadata is not None)
    if not counts:
        return None
    # Ties go to the first file by name, so the choice does not depend on input order.
    best = max(counts.values())
    for dist_file in sorted(files, key=lambda f: f.filename):
        if dist_file.metadata is not None and counts[dist_file.metadata] == best:
            return dist_file.metadata
    raise AssertionError("unreachable")


def render_metadata(metadata: CoreMetadata | None) -> dict[str, Any]:
    """Return the core metadata fields as the JSON API shows them; all None when unknown."""
    if metadata is None:
        return dict.fromkeys(
            ("metadata-version", "requires-dist", "requires-python", "provides-extra", "dynamic")
        )
    return {
        "metadata-version": metadata.metadata_version,
        "requires-dist": list(metadata.requires_dist),
        "requires-python": metadata.requires_python,
        "provides-extra": list(metadata.provides_extra),
        "dynamic": list(metadata.dynamic),
    }
