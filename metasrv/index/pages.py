"""Simple repository API constants and the parsing of PEP 503 HTML pages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin

from metasrv.model import SourceState

MIME_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691
MIME_SIMPLE_HTML = "application/vnd.pypi.simple.v1+html"  # PEP 691
MIME_HTML = "text/html"  # PEP 503
API_VERSION = "1.1"  # PEP 700 added versions, size and upload-time


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file as a project page lists it."""

    filename: str
    url: str
    hashes: Mapping[str, str]
    requires_python: str | None = None
    yanked: bool | str = False
    size: int | None = None
    upload_time: str | None = None
    core_metadata: Mapping[str, str] | bool = False  # PEP 658 / 714: hashes, True, or absent


@dataclass(frozen=True, slots=True)
class ProjectPage:
    """A project page of the source: its files, PEP 700 versions, and its state for next time."""

    name: str
    files: tuple[SourceFile, ...]
    versions: tuple[str, ...] = ()
    state: SourceState = field(default_factory=SourceState)


class _AnchorParser(HTMLParser):
    """Collect every anchor's attributes and text, and the page's <base href>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.base: str | None = None
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "base" and self.base is None:
            self.base = dict(attrs).get("href")
        elif tag == "a":
            self._open, self._text = dict(attrs), []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open is not None:
            self.anchors.append((self._open, "".join(self._text).strip()))
            self._open = None


def parse_html_listing(html: str) -> list[str]:
    """Return the project names a PEP 503 root page links to, as its link text spells them."""
    parser = _AnchorParser()
    parser.feed(html)
    return [text for attrs, text in parser.anchors if text and attrs.get("href")]


def parse_html_project(html: str, page_url: str, normalized_name: str) -> ProjectPage:
    """Parse a PEP 503 project page, with PEP 592 yanks and PEP 658 / 714 metadata."""
    parser = _AnchorParser()
    parser.feed(html)
    base = urljoin(page_url, parser.base) if parser.base else page_url
    files = []
    for attrs, text in parser.anchors:
        href = attrs.get("href")
        if not href:
            continue
        url, fragment = urldefrag(urljoin(base, href))
        hashes = dict([fragment.split("=", 1)]) if "=" in fragment else {}
        yanked: bool | str = False
        if "data-yanked" in attrs:
            yanked = attrs["data-yanked"] or True
        metadata_attr = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata"))
        core_metadata: dict[str, str] | bool = False
        if metadata_attr is not None:
            core_metadata = dict([metadata_attr.split("=", 1)]) if "=" in metadata_attr else True
        files.append(
            SourceFile(
                filename=text or url.rsplit("/", 1)[-1],
                url=url,
                hashes=hashes,
                requires_python=attrs.get("data-requires-python") or None,
                yanked=yanked,
                core_metadata=core_metadata,
            )
        )
    return ProjectPage(name=normalized_name, files=tuple(files))
