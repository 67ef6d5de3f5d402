"""Core metadata from inside wheels (read by byte ranges) and sdists, with size limits."""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from packaging.metadata import parse_email
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)

from metasrv.errors import InvalidArchive
from metasrv.model import CoreMetadata, MetadataStatus
from metasrv.names import MAX_VERSION_LENGTH

if TYPE_CHECKING:
    from typing_extensions import Buffer

MAX_METADATA_BYTES = 1024 * 1024
# The tail of a wheel read first: its central directory and, usually, its dist-info files.
WHEEL_TAIL_BYTES = 8 * 1024
MAX_SDIST_BYTES = 100 * 1024 * 1024
# The head of a .tar.gz sdist read first: PKG-INFO is usually among its first members.
SDIST_HEAD_BYTES = 256 * 1024
# Metadata 2.2 (PEP 643) is the first version whose sdist fields are trustworthy unless Dynamic.
STATIC_SDIST_METADATA = (2, 2)
# What a .tar.gz sdist may inflate to before its PKG-INFO: gzip packs zeros 1000:1, so the
# compressed cap alone would allow 100 GB of work.
MAX_UNPACKED_SDIST_BYTES = 256 * 1024 * 1024
_METADATA_VERSION = re.compile(r"(\d{1,4})\.(\d{1,4})")
# The fields we keep; one packaging could not parse must not be dropped silently.
_READ_FIELDS = (
    "metadata-version",
    "name",
    "version",
    "requires-dist",
    "requires-python",
    "provides-extra",
    "dynamic",
)


@dataclass(frozen=True, slots=True)
class ReadMetadata:
    """Core metadata read from a file, and the Name it states."""

    metadata: CoreMetadata | None
    name: str | None
    status: MetadataStatus | None = None
    reason: str | None = None
    version: str | None = None
    document: bytes | None = None  # the METADATA / PKG-INFO bytes, exactly as read (PEP 658)
    from_source: bool = False  # whether the source serves the document itself (PEP 658)
    size: int | None = None  # the archive's length, when reading it told


def parse_metadata(content: bytes) -> ReadMetadata:
    """Parse a METADATA / PKG-INFO file with packaging."""
    if len(content) > MAX_METADATA_BYTES:
        raise InvalidArchive(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Core metadata is UTF-8; pip refuses other bytes (UnsupportedWheel, "Error decoding
        # metadata") and uv too, so a guess would tell resolvers what no installer sees.
        byte = content[exc.start]
        raise InvalidArchive(f"metadata is not UTF-8: byte {exc.start} is {byte:#x}") from None
    raw, unparsed = parse_email(content)
    unread = [key for key in _READ_FIELDS if key in unparsed]
    if unread:
        raise InvalidArchive(
            f"metadata field {unread[0]} cannot be read: {unparsed[unread[0]]!r:.80}"
        )
    if "metadata_version" not in raw:
        raise InvalidArchive("metadata has no Metadata-Version")
    if not _METADATA_VERSION.fullmatch(raw["metadata_version"]):
        raise InvalidArchive(f"invalid Metadata-Version {raw['metadata_version'][:40]!r}")
    metadata = CoreMetadata(
        metadata_version=raw["metadata_version"],
        requires_dist=tuple(raw.get("requires_dist", ())),
        requires_python=raw.get("requires_python"),
        provides_extra=tuple(raw.get("provides_extra", ())),
        dynamic=tuple(raw.get("dynamic", ())),
    )
    return ReadMetadata(metadata, raw.get("name"), version=raw.get("version"), document=content)


def sdist_metadata(content: bytes) -> ReadMetadata:
    """Return what an sdist's PKG-INFO states, trusting it only as PEP 643 allows."""
    read = parse_metadata(content)
    assert read.metadata is not None
    version = tuple(int(part) for part in read.metadata.metadata_version.split("."))
    if version < STATIC_SDIST_METADATA:
        reason = f"sdist metadata {read.metadata.metadata_version} does not declare static fields"
        # Nothing to serve as .metadata: the fields are not known.
        return ReadMetadata(None, read.name, MetadataStatus.DYNAMIC, reason, read.version)
    return read


def is_wheel(filename: str) -> bool:
    """Return whether a filename is a wheel's."""
    return filename.endswith(".whl")


class _Missing(Exception):
    """A read of bytes that have not been fetched yet."""

    def __init__(self, start: int, end: int) -> None:
        super().__init__(start, end)
        self.start, self.end = start, end


class _SparseFile(io.RawIOBase):
    """A seekable file of known size of which only some byte ranges are present."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.position = 0
        self.segments: list[tuple[int, bytes]] = []

    def add(self, start: int, data: bytes) -> None:
        self.segments.append((start, data))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self.position + len(view), self.size)
        if end <= self.position:
            return 0
        for start, data in self.segments:
            if start <= self.position and end <= start + len(data):
                chunk = data[self.position - start : end - start]
                view[: len(chunk)] = chunk
                self.position = end
                return len(chunk)
        raise _Missing(self.position, end)


RangeReader = Callable[[int, int], Awaitable[bytes]]
"""Fetch bytes [start, end) of a remote file."""


async def wheel_metadata(size: int, tail: bytes, read_range: RangeReader) -> ReadMetadata:
    """Return a wheel's METADATA, given its size, its last bytes and a way to fetch others."""
    sparse = _SparseFile(size)
    sparse.add(size - len(tail), tail)
    for _attempt in range(4):
        try:
            return _read_wheel(sparse)
        except _Missing as missing:
            # Fetch what zipfile asked for plus room for the entry's data that follows a header.
            end = min(size, max(missing.end, missing.start + WHEEL_TAIL_BYTES))
            sparse.add(missing.start, await read_range(missing.start, end))
    raise InvalidArchive("wheel needs more range reads than a wheel should")


def wheel_metadata_from_bytes(content: bytes) -> ReadMetadata:
    """Return the METADATA of a wheel held whole in memory."""
    sparse = _SparseFile(len(content))
    sparse.add(0, content)
    return _read_wheel(sparse)


def _read_wheel(sparse: _SparseFile) -> ReadMetadata:
    try:
        with zipfile.ZipFile(sparse) as archive:
            candidates = [
                info
                for info in archive.infolist()
                if info.filename.count("/") == 1 and info.filename.endswith(".dist-info/METADATA")
            ]
            if len(candidates) != 1:
                raise InvalidArchive(f"wheel has {len(candidates)} top-level .dist-info/METADATA")
            info = candidates[0]
            if info.file_size > MAX_METADATA_BYTES:
                raise InvalidArchive(f"METADATA is larger than {MAX_METADATA_BYTES} bytes")
            with archive.open(info) as entry:
                content = entry.read(MAX_METADATA_BYTES + 1)
    except _Missing:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as exc:
        raise InvalidArchive(f"corrupt wheel: {exc}") from None
    return parse_metadata(content)


def sdist_metadata_from_head(filename: str, head: bytes) -> ReadMetadata | None:
    """Return the PKG-INFO of a .tar.gz sdist from its first bytes, or None if it lies further."""
    if not filename.endswith(".tar.gz"):
        return None
    try:
        return sdist_metadata_from_bytes(filename, head)
    except InvalidArchive:
        # A cut-off archive reads as corrupt; only the whole file can tell.
        return None


def sdist_metadata_from_bytes(filename: str, content: bytes) -> ReadMetadata:
    """Return the PKG-INFO of an sdist (.tar.gz or .zip) held whole in memory."""
    try:
        if filename.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                names = [n for n in archive.namelist() if n.count("/") == 1]
                pkg_info = next((n for n in names if n.endswith("/PKG-INFO")), None)
                if pkg_info is None:
                    raise InvalidArchive("sdist has no top-level PKG-INFO")
                info = archive.getinfo(pkg_info)
                if info.file_size > MAX_METADATA_BYTES:
                    raise InvalidArchive(f"PKG-INFO is larger than {MAX_METADATA_BYTES} bytes")
                with archive.open(info) as entry:
                    return sdist_metadata(entry.read(MAX_METADATA_BYTES + 1))
        # Stream mode reads members in order and stops at PKG-INFO, which sdists put near the front.
        with tarfile.open(fileobj=_unpacked(content), mode="r|") as archive:
            for member in archive:
                if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                    if not member.isfile() or member.size > MAX_METADATA_BYTES:
                        raise InvalidArchive("PKG-INFO is not a small regular file")
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    return sdist_metadata(extracted.read(MAX_METADATA_BYTES + 1))
        raise InvalidArchive("sdist has no top-level PKG-INFO")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise InvalidArchive(f"corrupt sdist: {exc}") from None


class _CappedReader(io.RawIOBase):
    """A stream that fails once more than ``limit`` bytes have been read from it."""

    def __init__(self, stream: io.BufferedIOBase, limit: int) -> None:
        self.stream, self.limit, self.count = stream, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        read = self.stream.readinto(view)
        self.count += read
        if self.count > self.limit:
            raise InvalidArchive(f"sdist inflates past {self.limit} bytes before its PKG-INFO")
        return read


def _unpacked(content: bytes) -> io.BufferedReader:
    """Return a .tar.gz's tar stream, inflated lazily and capped; a plain tar as it is."""
    if not content.startswith(b"\x1f\x8b"):
        return io.BufferedReader(io.BytesIO(content))
    inflated = gzip.GzipFile(fileobj=io.BytesIO(content))
    return io.BufferedReader(_CappedReader(inflated, MAX_UNPACKED_SDIST_BYTES), 1024 * 1024)


def _parse_filename(filename: str) -> tuple[str, str] | None:
    try:
        if is_wheel(filename):
            name, version, _build, _tags = parse_wheel_filename(filename)
        elif filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
        else:
            return None
    except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
        # ValueError: a version of more digits than Python converts (4,300).
        return None
    version_text = str(version)  # packaging renders it anew on each str()
    if len(version_text) > MAX_VERSION_LENGTH:
        return None
    return str(name), version_text


# One pull parses each of a page's files in several steps (numpy: 2,000 files): once, here.
_parsed_filename = lru_cache(maxsize=16_384)(_parse_filename)


def name_and_version_of_filename(filename: str) -> tuple[str, str] | None:
    """Return the normalized name and version a wheel or sdist filename carries, or None."""
    return _parsed_filename(filename)


def project_of_filename(filename: str) -> str | None:
    """Return the normalized project name a wheel or sdist filename carries, or None."""
    parsed = _parsed_filename(filename)
    return None if parsed is None else parsed[0]


def version_of_filename(filename: str) -> str | None:
    """Return the (normalized) version a wheel or sdist filename carries, or None."""
    parsed = _parsed_filename(filename)
    return None if parsed is None else parsed[1]
