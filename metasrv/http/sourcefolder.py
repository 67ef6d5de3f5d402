"""The files a folder source serves itself: a file:// link inside the configured folder."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from metasrv.errors import SourceError


def source_folder_file(source_url: str | None, url: str) -> Path:
    """Return the path of a file:// URL inside the source folder ``source_url`` names."""
    if not source_url:
        # Not the server's working folder: a link there would send whatever lies beside it.
        raise SourceError(f"{url}: metasrv.toml names no source folder to send it from")
    parts, source = urlsplit(url), urlsplit(source_url)
    if parts.scheme != "file" or source.scheme not in ("file", ""):
        raise SourceError(f"{url}: not an http(s) URL or a file in the source folder")
    folder = Path(url2pathname(source.path)).resolve()
    path = Path(url2pathname(parts.path)).resolve()
    if not path.is_relative_to(folder):
        raise SourceError(f"{url}: outside the source folder {folder}")
    if not path.is_file():
        raise SourceError(f"{url}: the source folder has no such file")
    return path
