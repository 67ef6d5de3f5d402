"""The metadata of a project page's files: reused while their bytes are unchanged, else read."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from packaging.version import Version

from metasrv.errors import MetasrvError, SourceError
from metasrv.index import archives
from metasrv.index.client import FolderSource, IndexSource
from metasrv.index.filemetadata import read_metadata
from metasrv.index.pages import ProjectPage, SourceFile
from metasrv.model import DistFile, MetadataStatus

WHEELS_GIVE_METADATA = "the release's wheels give its metadata"
# Metadata in these states is read again by the next sync; other states belong to the bytes.
READ_AGAIN = frozenset({MetadataStatus.FETCH_FAILED, MetadataStatus.PENDING})


async def read_page_files(
    source: IndexSource | FolderSource, page: ProjectPage, known: dict[str, DistFile]
) -> list[tuple[DistFile, str | None, bool]]:
    """Read the metadata of a page's files: wheels first, then the sdists still needed.

    Returns each file with the Name its metadata states and whether reading it failed.
    """
    files = [f for f in page.files if archives.version_of_filename(f.filename) is not None]
    wheels = [f for f in files if archives.is_wheel(f.filename)]
    read = list(
        await asyncio.gather(*(_read_file(source, f, known.get(f.filename)) for f in wheels))
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


def listed_file(source_file: SourceFile) -> DistFile:
    """Return a file as its source page lists it, its metadata not read."""
    return DistFile(
        filename=source_file.filename,
        url=source_file.url,
        hashes=dict(source_file.hashes),
        size=source_file.size,
        upload_time=source_file.upload_time,
        requires_python=source_file.requires_python,
        yanked=source_file.yanked,
    )


async def _read_file(
    source: IndexSource | FolderSource,
    source_file: SourceFile,
    previous: DistFile | None,
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
        )
        return reused, None, False
    if skip:
        skipped = replace(
            dist_file, metadata_status=MetadataStatus.SKIPPED, metadata_reason=WHEELS_GIVE_METADATA
        )
        return skipped, None, False
    try:
        read = await read_metadata(source, source_file)
    except SourceError as exc:
        failed = MetadataStatus.FETCH_FAILED
        return replace(dist_file, metadata_status=failed, metadata_reason=exc.message), None, True
    except MetasrvError as exc:
        unusable = MetadataStatus.UNUSABLE
        return replace(dist_file, metadata_status=unusable, metadata_reason=exc.message), None, True
    read_file = replace(
        dist_file, metadata=read.metadata, metadata_status=read.status, metadata_reason=read.reason
    )
    return read_file, read.name, False
