"""Core metadata of one source file: its PEP 658 file, else its wheel by ranges, else its sdist."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from metasrv.errors import InvalidArchive, InvalidInput, SourceError
from metasrv.index import archives
from metasrv.index.client import Fetcher, FolderSource, IndexSource, read_capped
from metasrv.index.pages import SourceFile
from metasrv.names import normalize_name, parse_version

MAX_ARCHIVE_BYTES = archives.MAX_SDIST_BYTES


async def read_metadata(
    source: IndexSource | FolderSource, source_file: SourceFile
) -> archives.ReadMetadata:
    """Return a file's core metadata, checked against the name and version of its file name."""
    read = await _read_metadata(source, source_file)
    _check_identity(source_file.filename, read)
    return read


def _check_identity(filename: str, read: archives.ReadMetadata) -> None:
    """Raise InvalidArchive when metadata names another project or version than the file does."""
    expected = archives.name_and_version_of_filename(filename)
    if expected is None:
        return
    name, version = expected
    stated_name, stated_version = read.name or "", read.version or ""
    # Installers check the same (pip: "has inconsistent name / version") and refuse the file.
    if not _same_name(stated_name, name) or not _same_version(stated_version, version):
        raise InvalidArchive(
            f"metadata says {stated_name[:100]!r} {stated_version[:100]!r}, "
            f"the file name {name!r} {version!r}"
        )


def _same_name(stated: str, normalized: str) -> bool:
    try:
        return normalize_name(stated) == normalized
    except InvalidInput:
        return False


def _same_version(stated: str, version: str) -> bool:
    try:
        return parse_version(stated) == parse_version(version)
    except InvalidInput:
        return False


def probes_metadata_file(source: IndexSource | FolderSource, source_file: SourceFile) -> bool:
    """Return whether to ask for a wheel's PEP 658 file that its page does not list."""
    return (
        isinstance(source, IndexSource)
        and source.fetcher.options.probe_metadata_files
        and archives.is_wheel(source_file.filename)
        and source_file.url.startswith(("http://", "https://"))
    )


async def read_metadata_file(source: IndexSource, source_file: SourceFile) -> bytes | None:
    """Return the document the source serves as a file's ``.metadata``, or None without one."""
    response = await source.fetcher.get(
        source_file.url + ".metadata", max_bytes=archives.MAX_METADATA_BYTES
    )
    return response.content if response.status_code == 200 else None


async def _read_metadata(
    source: IndexSource | FolderSource, source_file: SourceFile
) -> archives.ReadMetadata:
    """Return a file's core metadata: its PEP 658 file, its wheel by ranges, or its sdist."""
    if isinstance(source, FolderSource):
        return _from_whole_file(source_file, _read_local(source_file.url))
    fetcher = source.fetcher
    if source_file.core_metadata or probes_metadata_file(source, source_file):
        response = await fetcher.get(
            source_file.url + ".metadata", max_bytes=archives.MAX_METADATA_BYTES
        )
        if response.status_code == 200:
            expected = source_file.core_metadata
            if (
                isinstance(expected, dict)
                and "sha256" in expected
                and hashlib.sha256(response.content).hexdigest() != expected["sha256"]
            ):
                raise InvalidArchive("hash mismatch: PEP 658 metadata file")
            # A client can be sent to an http(s) source's own file; others' are served by us.
            served_by_source = source_file.url.startswith(("http://", "https://"))
            return replace(archives.parse_metadata(response.content), from_source=served_by_source)
    if archives.is_wheel(source_file.filename):
        return await _read_wheel_by_ranges(fetcher, source_file)
    head_range = {
        "range": f"bytes=0-{archives.SDIST_HEAD_BYTES - 1}",
        "accept-encoding": "identity",
    }
    response = await fetcher.get(source_file.url, head_range, max_bytes=MAX_ARCHIVE_BYTES)
    if response.status_code == 206:
        read = archives.sdist_metadata_from_head(source_file.filename, response.content)
        total = response.headers.get("content-range", "").rpartition("/")[2]
        if read is not None:
            return replace(read, size=int(total) if total.isdigit() else None)
        response = await fetcher.get(source_file.url, max_bytes=MAX_ARCHIVE_BYTES)
    _require_ok(response.status_code, source_file.url)
    return _from_whole_file(source_file, response.content)


async def _read_wheel_by_ranges(fetcher: Fetcher, source_file: SourceFile) -> archives.ReadMetadata:
    """Read a wheel's METADATA with HTTP range requests, as pip and uv do."""
    headers = {"range": f"bytes=-{archives.WHEEL_TAIL_BYTES}", "accept-encoding": "identity"}
    response = await fetcher.get(source_file.url, headers, max_bytes=MAX_ARCHIVE_BYTES)
    if response.status_code == 200:
        return _from_whole_file(source_file, response.content)
    _require_ok(response.status_code, source_file.url, expected=206)
    total = response.headers.get("content-range", "").rpartition("/")[2]
    if not (total.isascii() and total.isdigit() and len(total) <= 18):
        raise InvalidArchive(f"{source_file.url}: 206 without a Content-Range total")
    fetched = len(response.content)

    async def read_range(start: int, end: int) -> bytes:
        nonlocal fetched
        fetched += end - start
        # A central directory that claims to be huge must not make us fetch the whole wheel.
        if fetched > MAX_ARCHIVE_BYTES:
            raise InvalidArchive(f"wheel needs more than {MAX_ARCHIVE_BYTES} bytes of ranges")
        ranged = await fetcher.get(
            source_file.url,
            {"range": f"bytes={start}-{end - 1}", "accept-encoding": "identity"},
            max_bytes=end - start,
        )
        _require_ok(ranged.status_code, source_file.url, expected=206)
        if len(ranged.content) != end - start:
            raise InvalidArchive(f"{source_file.url}: range answer has the wrong length")
        return ranged.content

    read = await archives.wheel_metadata(int(total), response.content, read_range)
    return replace(read, size=int(total))


async def file_size(source: IndexSource | FolderSource, source_file: SourceFile) -> int | None:
    """Return a file's length by a HEAD (PEP 700 ``size``), or None when the source won't say."""
    if source_file.url.startswith("file:"):
        if not isinstance(source, FolderSource) and not source.fetcher.local:
            return None  # an http(s) index must not make us look at this machine's files
        path = Path(url2pathname(urlsplit(source_file.url).path))
        return path.stat().st_size if path.is_file() else None
    if isinstance(source, FolderSource):
        return None
    response = await source.fetcher.head(source_file.url)
    length = response.headers.get("content-length", "")
    return int(length) if response.status_code == 200 and length.isdigit() else None


def _from_whole_file(source_file: SourceFile, content: bytes) -> archives.ReadMetadata:
    expected = source_file.hashes.get("sha256")
    if expected is not None and hashlib.sha256(content).hexdigest() != expected:
        raise InvalidArchive("hash mismatch: the file's sha256 is not the one the index lists")
    if archives.is_wheel(source_file.filename):
        read = archives.wheel_metadata_from_bytes(content)
    else:
        read = archives.sdist_metadata_from_bytes(source_file.filename, content)
    return replace(read, size=len(content))


def _read_local(url: str) -> bytes:
    return read_capped(Path(url2pathname(urlsplit(url).path)), MAX_ARCHIVE_BYTES)


def _require_ok(status: int, url: str, expected: int = 200) -> None:
    if status != expected:
        raise SourceError(f"{url}: HTTP {status}")
