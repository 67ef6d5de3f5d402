"""The metadata of a project page's files: reused while their bytes are unchanged, else read."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping
from dataclasses import replace

from packaging.version import Version

from metasrv.errors import MetasrvError, SourceError
from metasrv.index import archives
from metasrv.index.client import FolderSource, IndexSource
from metasrv.index.filemetadata import (
    file_size,
    probes_metadata_file,
    read_metadata,
    read_metadata_file,
)
from metasrv.index.pages import ProjectPage, SourceFile
from metasrv.model import DistFile, MetadataStatus
from metasrv.names import core_metadata_path

WHEELS_GIVE_METADATA = "the release's wheels give its metadata"
# Metadata in these states is read again by the next sync; other states belong to the bytes.
READ_AGAIN = frozenset({MetadataStatus.FETCH_FAILED, MetadataStatus.PENDING})
_SHA256 = re.compile(r"[0-9a-f]{64}")


async def read_page_files(
    source: IndexSource | FolderSource,
    page: ProjectPage,
    known: dict[str, DistFile],
    documents: dict[str, bytes],
) -> list[tuple[DistFile, str | None, bool]]:
    """Read the metadata of a page's files: wheels first, then the sdists still needed.

    Returns each file with the Name its metadata states and whether reading it failed; metadata
    documents the source does not serve itself are added to ``documents``, by path, to store.
    """
    files = [f for f in page.files if archives.version_of_filename(f.filename) is not None]
    wheels = [f for f in files if archives.is_wheel(f.filename)]
    read = list(
        await asyncio.gather(
            *(_read_file(source, f, known.get(f.filename), documents) for f in wheels)
        )
    )
    # Metadata in order: PEP 658, then wheels, then sdists; an sdist is read (often a whole
    # download) only for releases whose wheels gave none.
    covered = {Version(version_of(d.filename)) for d, _, _ in read if d.metadata is not None}
    read += await asyncio.gather(
        *(
            _read_file(
                source,
                f,
                known.get(f.filename),
                documents,
                skip=Version(version_of(f.filename)) in covered and not f.core_metadata,
            )
            for f in files
            if not archives.is_wheel(f.filename)
        )
    )
    return read


def version_of(filename: str) -> str:
    """Return the version of a file name known to carry one."""
    version_text = archives.version_of_filename(filename)
    assert version_text is not None
    return version_text


def listed_file(
    source_file: SourceFile,
    metadata_status: MetadataStatus | None = None,
    core_metadata_sha256: str | None = None,
) -> DistFile:
    """Return a file as its source page lists it, its metadata not read."""
    return DistFile(
        filename=source_file.filename,
        url=source_file.url,
        hashes=dict(source_file.hashes),
        size=source_file.size,
        upload_time=source_file.upload_time,
        requires_python=source_file.requires_python,
        yanked=source_file.yanked,
        metadata_status=metadata_status,
        core_metadata_sha256=core_metadata_sha256,
    )


async def _read_file(
    source: IndexSource | FolderSource,
    source_file: SourceFile,
    previous: DistFile | None,
    documents: dict[str, bytes],
    *,
    skip: bool = False,
) -> tuple[DistFile, str | None, bool]:
    """Return a file with its core metadata, the Name it states, and whether reading it failed.

    Metadata is reused when the file's hashes are unchanged, unless fetching it failed last time.
    """
    dist_file = listed_file(source_file)
    if (
        previous is not None
        and previous.hashes == dist_file.hashes
        and dist_file.hashes
        and previous.metadata_status not in READ_AGAIN
    ):
        reused = replace(
            dist_file,
            metadata=previous.metadata,
            metadata_status=previous.metadata_status,
            metadata_reason=previous.metadata_reason,
            metadata_built_on=previous.metadata_built_on,
            size=dist_file.size if dist_file.size is not None else previous.size,
            core_metadata_sha256=previous.core_metadata_sha256,
            core_metadata_stored=previous.core_metadata_stored,
        )
        reused = _with_listed_hash(reused, source_file)
        return await _with_probed_hash(source, reused, source_file), None, False
    if skip:
        skipped = replace(
            dist_file,
            metadata_status=MetadataStatus.SKIPPED,
            metadata_reason=WHEELS_GIVE_METADATA,
            size=await _size(source, source_file),
        )
        return skipped, None, False
    try:
        read = await read_metadata(source, source_file)
    except SourceError as exc:
        failed = MetadataStatus.FETCH_FAILED
        return replace(dist_file, metadata_status=failed, metadata_reason=exc.message), None, True
    except MetasrvError as exc:
        unusable = replace(
            dist_file,
            metadata_status=MetadataStatus.UNUSABLE,
            metadata_reason=exc.message,
            size=await _size(source, source_file),
        )
        return unusable, None, True
    read_file = replace(
        dist_file,
        metadata=read.metadata,
        metadata_status=read.status,
        metadata_reason=read.reason,
        size=read.size if dist_file.size is None else dist_file.size,
    )
    if read_file.size is None:
        read_file = replace(read_file, size=await _size(source, source_file))
    # A source taken to serve wheels' PEP 658 files (--probe-metadata) is not copied from where
    # it lacks one: the file is listed without .metadata, as on an index without PEP 658.
    unserved = not read.from_source and probes_metadata_file(source, source_file)
    if read.document is not None and read.metadata is not None and not unserved:
        # PEP 658: the .metadata served is the document itself, hashed as it is.
        digest = hashlib.sha256(read.document).hexdigest()
        read_file = replace(
            read_file, core_metadata_sha256=digest, core_metadata_stored=not read.from_source
        )
        if not read.from_source:
            documents[core_metadata_path(digest)] = read.document
    return read_file, read.name, False


def _lacks_hash(dist_file: DistFile) -> bool:
    """Return whether a file of an http(s) source has known metadata but no document's hash."""
    # Data synced before metasrv kept documents has none, so its files offer no .metadata.
    return (
        dist_file.core_metadata_sha256 is None
        and dist_file.metadata_status is None
        and dist_file.metadata is not None
        and dist_file.url.startswith(("http://", "https://"))
    )


def declared_sha256(source_file: SourceFile) -> str | None:
    """Return the sha256 a page declares for a file's PEP 658 document, if it is a valid one."""
    declared = source_file.core_metadata
    digest = declared.get("sha256", "").lower() if isinstance(declared, Mapping) else ""
    return digest if _SHA256.fullmatch(digest) else None


def _with_listed_hash(dist_file: DistFile, source_file: SourceFile) -> DistFile:
    """Return a file lacking a hash with the one its page lists for the source's PEP 658 file.

    The page's hash is the document's (PEP 658) and clients are sent to the source's own file,
    so nothing needs reading.
    """
    digest = declared_sha256(source_file)
    if not _lacks_hash(dist_file) or digest is None:
        return dist_file
    return replace(dist_file, core_metadata_sha256=digest, core_metadata_stored=False)


async def _with_probed_hash(
    source: IndexSource | FolderSource, dist_file: DistFile, source_file: SourceFile
) -> DistFile:
    """Return a file lacking a hash with that of the PEP 658 file its source serves unlisted."""
    if (
        not isinstance(source, IndexSource)
        or not _lacks_hash(dist_file)
        or not probes_metadata_file(source, source_file)
    ):
        return dist_file
    try:
        document = await read_metadata_file(source, source_file)
        read = None if document is None else archives.parse_metadata(document)
    except MetasrvError:
        return dist_file  # no hash is no error: clients read the wheel, as before
    # Only the document the recorded metadata says: a hash must name what was read.
    if document is None or read is None or read.metadata != dist_file.metadata:
        return dist_file
    digest = hashlib.sha256(document).hexdigest()
    return replace(dist_file, core_metadata_sha256=digest, core_metadata_stored=False)


async def _size(source: IndexSource | FolderSource, source_file: SourceFile) -> int | None:
    """Return a file's size from its page, else by asking the source; None when it won't say."""
    if source_file.size is not None:
        return source_file.size
    try:
        return await file_size(source, source_file)
    except SourceError:
        # A size is a courtesy to clients (PEP 700); a source that won't tell is no failure.
        return None
