"""Simple repository API constants and the parsing of a source's PEP 503 / 691 pages."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any, NamedTuple
from urllib.parse import urldefrag, urljoin, urlsplit

from metasrv.errors import SourceError
from metasrv.model import SourceState

MIME_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691
MIME_SIMPLE_HTML = "application/vnd.pypi.simple.v1+html"  # PEP 691
MIME_HTML = "text/html"  # PEP 503
API_VERSION = "1.1"  # PEP 700 added versions, size and upload-time
# Schemes a page may link files with; file:// is followed only when the source is itself local.
FILE_URL_SCHEMES = frozenset({"http", "https", "file"})
_HEX = re.compile(r"[0-9a-fA-F]{1,256}")
_HASH_NAME = re.compile(r"[a-z0-9_-]{1,32}")
# A link whose last segment is a plain file name: joined as its folder's join plus that name.
_PLAIN_LINK = re.compile(r"([^\x00-\x20\x7f?#;\\]*/)([^\x00-\x20\x7f?#;\\/:]+)")
# An http(s) URL with a host and neither query, fragment, params nor brackets: urljoin gives it
# back as it is (PyPI links every file so, each in a folder of its own).
_ABSOLUTE_LINK = re.compile(
    r"(https?)://[^\x00-\x20\x7f/?#;\\\[\]]+(?:/[^\x00-\x20\x7f?#;\\\[\]]*)?"
)
# A relative folder as mirrors write one per file ("../../packages/4e/3a/<hash>/"): its dot
# segments and first name, joined once, then names that are neither "." nor "..".
_RELATIVE_FOLDER = re.compile(
    r"((?:\.\.?/)*[^\x00-\x20\x7f?#;\\/:.][^\x00-\x20\x7f?#;\\/:]*/)"
    r"((?:(?!\.\.?/)[^\x00-\x20\x7f?#;\\/]+/)*)"
)
# Far longer than any real value; it bounds what one page entry can put into a project file.
MAX_VALUE_CHARS = 4096


class SourceFile(NamedTuple):
    """One file as a project page lists it."""

    # A tuple, not a frozen dataclass: a page makes one per file, numpy's 4,400 at a time.
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


def join_link(base: str, link: str) -> tuple[str, str]:
    """Return ``urljoin(base, link)`` and its scheme.

    urljoin costs more than the rest of a file entry (numpy's page has 4,400). An absolute
    http(s) link is its own join; otherwise a plain file name is appended to its folder's join,
    made once per folder, or once per leading part of it when mirrors give each file a folder of
    its own ("../../packages/4e/3a/<hash>/": "../../packages/" is joined once).
    """
    absolute = _ABSOLUTE_LINK.fullmatch(link)
    if absolute is not None and link.isascii():
        return link, absolute[1]
    plain = _PLAIN_LINK.fullmatch(link)
    folder = "" if plain is None else plain[1]
    # In "https://host" and "//host" the name is a host's; "." and ".." are no file names.
    after_host = folder.partition("//")[2]
    if plain is None or plain[2] in (".", "..") or ("//" in folder and "/" not in after_host):
        return _joined(base, link)
    relative = _RELATIVE_FOLDER.fullmatch(folder)
    joined, rest = (relative[1], relative[2]) if relative is not None else (folder, "")
    joined_folder, scheme = _join_folder(base, joined)
    return joined_folder + rest + plain[2], scheme


@lru_cache(maxsize=256)
def _join_folder(base: str, folder: str) -> tuple[str, str]:
    return _joined(base, folder)


def _joined(base: str, link: str) -> tuple[str, str]:
    try:
        url = urljoin(base, link)
        return url, urlsplit(url).scheme
    except ValueError as exc:  # a host's IPv6 bracket left open ("//[")
        raise SourceError(f"{link[:100]!r} is no URL: {exc}") from None


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
        link, _, fragment = href.partition("#")
        url, scheme = join_link(base, link) if link else (urldefrag(base)[0], urlsplit(base).scheme)
        if scheme not in FILE_URL_SCHEMES:
            continue  # a link to anything but a file (mailto:, ftp:) is no file of the project
        for value in (*attrs.values(), text):
            _expect(value or "", str, "a link attribute", page_url)
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
    return ProjectPage(name=normalized_name, files=unique_files(files))


def parse_serial(value: Any, where: str) -> int | None:
    """Return a ``_last-serial``: an integer, or the decimal string PyPI's JSON pages send."""
    if value is None:
        return None
    # PyPI sends a string on project pages ("_last-serial": "26356948"); PEP 691 gives no type.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise SourceError(f"{where}: _last-serial must be a serial number, not {value!r:.40}")
    return value


def _expect(value: Any, kind: type | tuple[type, ...], what: str, where: str) -> Any:
    """Return ``value`` if it has the type the page format gives it, else SourceError."""
    # JSON gives exact types: checked by identity first, as numpy's page has 20,000 values.
    value_type = type(value)
    exact = value_type is kind or (isinstance(kind, tuple) and value_type in kind)
    if exact and (value_type is not str or len(value) <= MAX_VALUE_CHARS):
        return value
    # bool is an int subclass: a size of `true` is not a size, nor `1` a yank.
    kinds = kind if isinstance(kind, tuple) else (kind,)
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if not isinstance(value, kind) or wrong_bool:
        raise SourceError(f"{where}: {what} must be {_KINDS.get(kind, kind)}, not {value!r:.80}")
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise SourceError(f"{where}: {what} is longer than {MAX_VALUE_CHARS} characters")
    return value


_KINDS: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    list: "an array",
    dict: "an object",
    (bool, str): "a boolean or a reason string",
    (str, type(None)): "a string or null",
    (int, type(None)): "an integer or null",
    (bool, dict): "a boolean or an object of hashes",
}


def _hashes(value: Any, what: str, where: str) -> dict[str, str]:
    """Return a PEP 691 hashes object: hash names to hex digests."""
    hashes = _expect(value, dict, what, where)
    for name, digest in hashes.items():
        if not (isinstance(name, str) and _HASH_NAME.fullmatch(name)):
            raise SourceError(f"{where}: {what} has a hash name that is none: {name!r:.80}")
        if not (isinstance(digest, str) and _HEX.fullmatch(digest)):
            raise SourceError(f"{where}: {what}[{name!r}] is no hex digest: {digest!r:.80}")
    return dict(hashes)


def _json_file(item: Any, base: str, where: str) -> SourceFile:
    """Return one PEP 691 file entry, every value checked for the type the PEP gives it."""
    entry = _expect(item, dict, "a file entry", where)
    filename = _expect(entry.get("filename"), str, "filename", where)
    where = f"{where} {filename[:100]!r}"
    url, scheme = join_link(base, _expect(entry.get("url"), str, "url", where))
    if scheme not in FILE_URL_SCHEMES:
        raise SourceError(f"{where}: url scheme is not http(s) or file: {url[:100]!r}")
    core_metadata = entry.get("core-metadata", entry.get("dist-info-metadata", False))
    _expect(core_metadata, (bool, dict), "core-metadata", where)
    size = _expect(entry.get("size"), (int, type(None)), "size", where)
    if size is not None and not 0 <= size < 2**63:
        raise SourceError(f"{where}: size {size} is out of range")
    return SourceFile(
        filename=filename,
        url=url,
        hashes=_hashes(entry.get("hashes", {}), "hashes", where),
        requires_python=_expect(
            entry.get("requires-python"), (str, type(None)), "requires-python", where
        )
        or None,
        yanked=_expect(entry.get("yanked", False), (bool, str), "yanked", where),
        size=size,
        upload_time=_expect(entry.get("upload-time"), (str, type(None)), "upload-time", where),
        core_metadata=(
            _hashes(core_metadata, "core-metadata", where)
            if isinstance(core_metadata, dict)
            else core_metadata
        ),
    )


def parse_json_project(document: Any, base: str) -> ProjectPage:
    """Parse a PEP 691 project page (with PEP 700 and 714 fields), checking every value's type."""
    page = _expect(document, dict, "the page", base)
    files = _expect(page.get("files"), list, "files", base)
    meta = _expect(page.get("meta", {}), dict, "meta", base)
    serial = parse_serial(meta.get("_last-serial"), f"{base}: meta")
    versions = _expect(page.get("versions", []), list, "versions", base)
    return ProjectPage(
        name=_expect(page.get("name"), str, "name", base),
        files=unique_files(_json_file(item, base, f"{base}: file") for item in files),
        versions=tuple(_expect(v, str, "a version", f"{base}: versions") for v in versions),
        state=SourceState(serial=serial),
    )


def unique_files(files: Iterable[SourceFile]) -> tuple[SourceFile, ...]:
    """Return a page's files with each file name once, as the page first lists it."""
    by_name: dict[str, SourceFile] = {}
    for source_file in files:
        by_name.setdefault(source_file.filename, source_file)
    return tuple(by_name.values())


def parse_json_listing(document: Any, base: str) -> list[str]:
    """Return the project names a PEP 691 root page lists."""
    page = _expect(document, dict, "the page", base)
    projects = _expect(page.get("projects", []), list, "projects", base)
    entries = (_expect(entry, dict, "a project entry", base) for entry in projects)
    return [_expect(entry.get("name"), str, "a project name", base) for entry in entries]
