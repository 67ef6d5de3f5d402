"""A project file as bytes: read whole, read one release, read only the registered name, write."""

from __future__ import annotations

import re

from packaging.version import Version

from metasrv.errors import InvalidInput
from metasrv.model import Project, Release
from metasrv.names import parse_version
from metasrv.repo import tomlcodec
from metasrv.tables import TableReader


def read_project(document: bytes, where: str) -> Project:
    """Parse a whole project file; ``where`` names it in errors."""
    return Project.from_toml(tomlcodec.loads(document, where=where), where)


def write_project(project: Project) -> bytes:
    """Return a project's file in canonical form."""
    return tomlcodec.dumps(project.to_toml())


# A table header of one release, as the canonical form writes it: [releases."1.0"...] / [[...]].
_RELEASE_HEADER = re.compile(
    rb'^\[\[?releases\.(?:"([^"\\\n]*)"|([A-Za-z0-9_-]+))[.\]]', re.MULTILINE
)
_HEADER = re.compile(rb"^\[", re.MULTILINE)


def read_release(document: bytes, where: str, version: Version) -> tuple[str, Release | None]:
    """Return a project file's registered name and the release PEP 440 equal to ``version``.

    Only the head and that release's tables are parsed when the file has the canonical shape
    (each release's tables contiguous); any other valid file is parsed whole.
    """
    head = _head(document)
    head_table = tomlcodec.loads(head, where=where)
    span = None if "releases" in head_table else _find_span(document, version)
    if span is _ABSENT:
        return TableReader(head_table, where).string("name"), None
    if span is not None:
        start, end = span
        partial = Project.from_toml(
            tomlcodec.loads(head + b"\n" + document[start:end], where=where), where
        )
        if len(partial.releases) == 1:
            return partial.name, partial.releases[0]
    project = read_project(document, where)
    return project.name, project.find_release(version)


_ABSENT = (-1, -1)


def _find_span(document: bytes, version: Version) -> tuple[int, int] | None:
    """Return the byte span of a release's tables, ``_ABSENT``, or None when only a whole parse
    can tell (the file is not in the canonical shape, or a key is no version)."""
    # Every table header a release's (C-level counts; a regex over megabytes costs ~10 ms).
    headers = document.count(b"\n[")
    if document.startswith(b"[") or headers != document.count(b"\n[releases.") + document.count(
        b"\n[[releases."
    ):
        return None
    exact = _exact_span(document, str(version))
    if exact is not None:
        return exact
    sections = _release_sections(document)
    if sections is None:
        return None
    try:
        return _span_of(sections, version) or _ABSENT
    except InvalidInput:
        return None


def _exact_span(document: bytes, version_text: str) -> tuple[int, int] | None:
    """Return the span of the release keyed exactly ``version_text``, if its tables are one run.

    A few ``find`` calls instead of indexing every release: botocore has ~2,000 of them.
    """
    quoted = b'"' + version_text.encode() + b'"'
    starts = [
        position + 1
        for marker in (b"\n[releases." + quoted, b"\n[[releases." + quoted)
        if (position := document.find(marker)) >= 0
    ]
    if not starts:
        return None
    first = min(starts)
    end = len(document)
    position = document.find(b"\n[", first)
    while position >= 0:
        header = _RELEASE_HEADER.match(document, position + 1)
        if header is None or (header.group(1) or header.group(2)) != version_text.encode():
            end = position + 1
            break
        position = document.find(b"\n[", position + 1)
    later = (
        document.find(b"\n[releases." + quoted, end),
        document.find(b"\n[[releases." + quoted, end),
    )
    return None if max(later) >= 0 else (first, end)


def _span_of(sections: dict[str, tuple[int, int]], version: Version) -> tuple[int, int] | None:
    """Return the span of the release equal to ``version``: its canonical spelling first."""
    exact = sections.get(str(version))
    if exact is not None:
        return exact
    for version_text, span in sections.items():
        if parse_version(version_text) == version:
            return span
    return None


def _release_sections(document: bytes) -> dict[str, tuple[int, int]] | None:
    """Return version text -> byte span of its tables, or None if the file is not so shaped."""
    headers = list(_HEADER.finditer(document))
    sections: dict[str, tuple[int, int]] = {}
    current: str | None = None
    for index, header in enumerate(headers):
        match = _RELEASE_HEADER.match(document, header.start())
        if match is None:
            return None
        version_text = (match.group(1) or match.group(2)).decode("utf-8", "replace")
        end = headers[index + 1].start() if index + 1 < len(headers) else len(document)
        if version_text == current:
            sections[version_text] = (sections[version_text][0], end)
        elif version_text in sections:
            return None
        else:
            sections[version_text] = (header.start(), end)
            current = version_text
    return sections


def registered_name(document: bytes, where: str) -> str:
    """Return a project file's registered name without parsing its releases.

    TOML puts top-level keys before the first table header, so the text up to that header is a
    complete document holding ``name``; listing 700,000 projects needs only that.
    """
    return TableReader(tomlcodec.loads(_head(document), where=where), where).string("name")


def source_serial(document: bytes, where: str) -> int | None:
    """Return a project file's ``source-serial`` without parsing its releases."""
    head = TableReader(tomlcodec.loads(_head(document), where=where), where)
    return head.optional_integer("source-serial")


def _head(document: bytes) -> bytes:
    first_header = _HEADER.search(document)
    return document if first_header is None else document[: first_header.start()]
