"""The simple repository API's pages: one PEP 691 dict rendered as JSON or PEP 503 HTML."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import orjson
from packaging.utils import NormalizedName

from metasrv.errors import NotAcceptable
from metasrv.index.pages import API_VERSION, MIME_HTML, MIME_SIMPLE_HTML, MIME_SIMPLE_JSON

# PEP 691: the "latest" aliases name whatever version the server serves.
_ALIASES = {
    MIME_SIMPLE_JSON: MIME_SIMPLE_JSON,
    "application/vnd.pypi.simple.latest+json": MIME_SIMPLE_JSON,
    MIME_SIMPLE_HTML: MIME_SIMPLE_HTML,
    "application/vnd.pypi.simple.latest+html": MIME_SIMPLE_HTML,
    MIME_HTML: MIME_HTML,
}
# A wildcard gets the legacy HTML page, as PyPI answers curl and older tools.
_WILDCARDS = {"*/*": MIME_HTML, "text/*": MIME_HTML, "application/*": MIME_SIMPLE_JSON}
# When a client weighs types equally, JSON first: it carries PEP 700's fields.
_PREFERENCE = (MIME_SIMPLE_JSON, MIME_SIMPLE_HTML, MIME_HTML)


def negotiate(accept: str | None, format_param: str | None = None) -> str:
    """Return the content type to answer with, by ``?format=`` (as PyPI allows) or Accept."""
    if format_param is not None:
        chosen = _ALIASES.get(format_param.strip().lower())
        if chosen is None:
            raise NotAcceptable(f"unsupported format {format_param!r}")
        return chosen
    if not accept:
        return MIME_HTML  # PEP 691: no Accept header means the legacy HTML page
    best: tuple[float, int, str] | None = None
    for item in accept.split(","):
        media, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        choice = _ALIASES.get(media) or _WILDCARDS.get(media)
        if choice is not None:
            candidate = (quality, -_PREFERENCE.index(choice), choice)
            if quality > 0 and (best is None or candidate > best):
                best = candidate
    if best is None:
        raise NotAcceptable(f"none of {accept!r} is served; ask for {', '.join(_PREFERENCE)}")
    return best[2]


class SimpleFile(NamedTuple):
    """A file as a project page lists it (PEP 691 / 700 / 714)."""

    # A tuple, not a frozen dataclass: a page makes one per file, numpy's 4,400 at a time.
    filename: str
    url: str
    hashes: dict[str, str]
    requires_python: str | None
    yanked: bool | str
    size: int | None
    upload_time: str | None
    metadata_sha256: str | None
    metadata_pending: bool = False  # not read yet, served on request (pull-through)


def project_page(name: str, versions: Iterable[str], files: Iterable[SimpleFile]) -> dict[str, Any]:
    """Return a PEP 691 project page."""
    entries = []
    for simple_file in files:
        entry: dict[str, Any] = {
            "filename": simple_file.filename,
            "url": simple_file.url,
            "hashes": simple_file.hashes,
            "requires-python": simple_file.requires_python,
            "yanked": simple_file.yanked,
        }
        if simple_file.size is not None:
            entry["size"] = simple_file.size
        if simple_file.upload_time is not None:
            entry["upload-time"] = simple_file.upload_time
        if simple_file.metadata_sha256 is not None:
            # PEP 714: core-metadata; pip before 23.3 reads only dist-info-metadata.
            entry["core-metadata"] = {"sha256": simple_file.metadata_sha256}
            entry["dist-info-metadata"] = {"sha256": simple_file.metadata_sha256}
        elif simple_file.metadata_pending:
            # PEP 714: true says the file exists without a hash; we read it when asked.
            entry["core-metadata"] = entry["dist-info-metadata"] = True
        entries.append(entry)
    # PEP 700 makes size required from 1.1 on: a page with a file of unknown size says 1.0.
    sized = all("size" in entry for entry in entries)
    return {
        "meta": {"api-version": API_VERSION if sized else "1.0"},
        "name": name,
        "versions": list(versions),
        "files": entries,
    }


def render_json(page: dict[str, Any]) -> bytes:
    """Render a page as PEP 691 JSON."""
    return orjson.dumps(page)


def render_project_html(page: dict[str, Any]) -> bytes:
    """Render a project page as PEP 503 HTML with PEP 592 / 658 / 714 attributes."""
    name = html.escape(page["name"])
    lines = [
        _html_head(f"Links for {name}", page["meta"]["api-version"]),
        f"<h1>Links for {name}</h1>",
    ]
    for entry in page["files"]:
        attributes = [f'href="{html.escape(_with_hash(entry))}"']
        if entry["requires-python"]:
            attributes.append(f'data-requires-python="{html.escape(entry["requires-python"])}"')
        if entry["yanked"] is not False:
            reason = "" if entry["yanked"] is True else html.escape(entry["yanked"])
            attributes.append(f'data-yanked="{reason}"')
        if entry.get("core-metadata") is True:
            attributes.append('data-core-metadata="true"')
            attributes.append('data-dist-info-metadata="true"')
        elif "core-metadata" in entry:
            value = f"sha256={entry['core-metadata']['sha256']}"
            attributes.append(f'data-core-metadata="{value}"')
            attributes.append(f'data-dist-info-metadata="{value}"')
        lines.append(f"<a {' '.join(attributes)}>{html.escape(entry['filename'])}</a><br/>")
    lines.append("</body>\n</html>\n")
    return "\n".join(lines).encode()


def _with_hash(entry: dict[str, Any]) -> str:
    hashes = entry["hashes"]
    for algorithm in ("sha256", *sorted(hashes)):
        if algorithm in hashes:
            return f"{entry['url']}#{algorithm}={hashes[algorithm]}"
    return str(entry["url"])


def _html_head(title: str, api_version: str = API_VERSION) -> str:
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        f'<meta name="pypi:repository-version" content="{api_version}">\n'
        f"<title>{title}</title>\n</head>\n<body>"
    )


def index_page_chunks(names: Mapping[NormalizedName, str], content_type: str) -> Iterator[bytes]:
    """Yield the root page listing every project, in chunks (it is ~40 MB at PyPI scale)."""
    if content_type == MIME_SIMPLE_JSON:
        yield b'{"meta":{"api-version":"' + API_VERSION.encode() + b'"},"projects":['
        first = True
        for name in names.values():
            yield (b"" if first else b",") + json.dumps({"name": name}).encode()
            first = False
        yield b"]}"
        return
    yield (_html_head("Simple index") + "\n").encode()
    batch: list[str] = []
    for normalized_name, name in names.items():
        batch.append(f'<a href="{normalized_name}/">{html.escape(name)}</a><br/>')
        if len(batch) == 1000:
            yield ("\n".join(batch) + "\n").encode()
            batch = []
    yield ("\n".join(batch) + "\n</body>\n</html>\n").encode()
