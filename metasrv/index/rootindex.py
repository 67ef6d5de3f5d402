"""A source's root index read in bounded memory: every project's name and PEP 691 _last-serial."""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from packaging.utils import NormalizedName

from metasrv.errors import InvalidInput, SourceError
from metasrv.index.client import ACCEPT, FolderSource, IndexSource
from metasrv.index.pages import MIME_SIMPLE_JSON, parse_html_listing, parse_serial
from metasrv.names import normalize_name

# PyPI's root is ~37 MB of JSON; it is written to a temporary file and parsed from there.
ROOT_MAX_BYTES = 1 << 30
_CHUNK_CHARS = 1 << 20
# One entry of the root ({"name": ..., "_last-serial": ...}) is tens of bytes; a megabyte is broken.
_MAX_VALUE_CHARS = 1 << 20
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\r\n"


@dataclass(slots=True)
class RootListing:
    """Every project a root lists: its serial (None when the root gives none) and its spelling."""

    serials: dict[NormalizedName, int | None] = field(default_factory=dict)
    spellings: dict[str, str] = field(default_factory=dict)  # only where it is not normalized
    etag: str | None = None
    spells_names: bool = True  # a folder's listing only has names as its files spell them

    def add(self, name: str, serial: int | None) -> None:
        """Record one listed project; a name that is no project name is not ours to mirror."""
        try:
            normalized_name = normalize_name(name)
        except InvalidInput:
            return
        self.serials[normalized_name] = serial
        if name != normalized_name:
            self.spellings[normalized_name] = name


async def read_root(source: IndexSource | FolderSource, etag: str | None) -> RootListing | None:
    """Return the source's root listing, or None when it answers 304 to ``etag``."""
    if isinstance(source, FolderSource):
        listing = RootListing(spells_names=False)
        for name in await source.list_projects():
            listing.add(name, None)
        return listing
    headers = {"accept": ACCEPT}
    if etag:
        headers["if-none-match"] = etag
    with tempfile.TemporaryFile() as body:
        # httpx asks for gzip / deflate itself and decodes while the body streams to disk.
        response = await source.fetcher.get(source.url, headers, ROOT_MAX_BYTES, sink=body)
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            raise SourceError(f"{source.url}: HTTP {response.status_code}")
        body.seek(0)
        text = io.TextIOWrapper(body, encoding="utf-8", errors="replace")
        listing = RootListing(etag=response.headers.get("etag"))
        content_type = response.headers.get("content-type", "").split(";")[0].strip()
        try:
            if content_type == MIME_SIMPLE_JSON:
                for name, serial in iter_json_projects(text):
                    listing.add(name, serial)
            else:
                for name in iter_html_projects(text):
                    listing.add(name, None)
        finally:
            text.detach()
    return listing


def iter_html_projects(stream: TextIO) -> Iterator[str]:
    """Yield the project names of a PEP 503 root page, a chunk of the page at a time."""
    tail = ""
    while chunk := stream.read(_CHUNK_CHARS):
        text = tail + chunk
        # Cut after the last complete anchor so no anchor spans two parses.
        cut = text.rfind("</a>") + len("</a>") if "</a>" in text else 0
        yield from parse_html_listing(text[:cut])
        tail = text[cut:]
        if len(tail) > _MAX_VALUE_CHARS:
            raise SourceError("root page: an anchor longer than a megabyte")
    yield from parse_html_listing(tail)


def iter_json_projects(stream: TextIO) -> Iterator[tuple[str, int | None]]:
    """Yield (name, _last-serial) of a PEP 691 root, decoding one entry at a time."""
    reader = _JsonReader(stream)
    reader.expect("{")
    seen_projects = False
    while reader.peek() != "}":
        key = reader.value()
        reader.expect(":")
        if key == "projects":
            seen_projects = True
            reader.expect("[")
            while reader.peek() != "]":
                yield _project_entry(reader.value())
                if reader.peek() != "]":
                    reader.expect(",")
            reader.expect("]")
        else:
            reader.value()
        if reader.peek() != "}":
            reader.expect(",")
    if not seen_projects:
        # Without this check a broken root would read as "the source lists nothing".
        raise SourceError("root index: no 'projects' list")


def _project_entry(entry: Any) -> tuple[str, int | None]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise SourceError(f"root index: a project entry is not {{'name': ...}}: {entry!r:.100}")
    return entry["name"], parse_serial(entry.get("_last-serial"), f"root index: {entry['name']!r}")


class _JsonReader:
    """Values of a JSON text read from a stream, with at most a chunk and one value in memory."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.buffer = ""
        self.position = 0
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.stream.read(_CHUNK_CHARS)
        if not chunk:
            self.eof = True
            return False
        self.buffer = self.buffer[self.position :] + chunk
        self.position = 0
        return True

    def peek(self) -> str:
        """Return the next character that is not whitespace, without consuming it."""
        while True:
            while self.position < len(self.buffer) and self.buffer[self.position] in _WHITESPACE:
                self.position += 1
            if self.position < len(self.buffer):
                return self.buffer[self.position]
            if not self._fill():
                raise SourceError("root index: the JSON ends early")

    def expect(self, character: str) -> None:
        """Consume ``character`` or fail naming what came instead."""
        found = self.peek()
        if found != character:
            raise SourceError(f"root index: expected {character!r}, found {found!r}")
        self.position += 1

    def value(self) -> Any:
        """Decode and consume the next JSON value."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.position)
            except json.JSONDecodeError as exc:
                if len(self.buffer) - self.position > _MAX_VALUE_CHARS or not self._fill():
                    raise SourceError(f"root index: invalid JSON: {exc}") from None
                continue
            # A number at the end of the buffer may go on in the next chunk.
            if end == len(self.buffer) and self._fill():
                continue
            self.position = end
            return value
