"""A source's PEP 691 page: any JSON at all is a typed page or a SourceError, nothing else."""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from metasrv.errors import SourceError
from metasrv.index.pages import MAX_VALUE_CHARS, join_link, parse_json_project

BASE = "https://index.test/simple/a/"
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
FILE_KEYS = [
    "filename",
    "url",
    "hashes",
    "requires-python",
    "yanked",
    "size",
    "upload-time",
    "core-metadata",
]


def _valid_file() -> dict[str, Any]:
    return {
        "filename": "a-1.0-py3-none-any.whl",
        "url": "../../files/a-1.0-py3-none-any.whl",
        "hashes": {"sha256": "ab" * 32},
        "requires-python": ">=3.8",
        "yanked": False,
        "size": 10,
        "upload-time": "2024-01-02T03:04:05.000000Z",
        "core-metadata": {"sha256": "cd" * 32},
    }


def _check_types(document: Any) -> None:
    try:
        page = parse_json_project(document, BASE)
    except SourceError:
        return
    assert isinstance(page.name, str)
    assert all(isinstance(version, str) for version in page.versions)
    for source_file in page.files:
        assert isinstance(source_file.filename, str)
        assert source_file.url.startswith(("http://", "https://", "file://"))
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in source_file.hashes.items())
        assert source_file.requires_python is None or isinstance(source_file.requires_python, str)
        assert isinstance(source_file.yanked, (bool, str))
        assert source_file.size is None or (
            isinstance(source_file.size, int) and not isinstance(source_file.size, bool)
        )
        assert source_file.upload_time is None or isinstance(source_file.upload_time, str)
        assert isinstance(source_file.core_metadata, (bool, dict))


@given(key=st.sampled_from(FILE_KEYS), value=JSON)
def test_one_wrong_value_in_a_file_entry_is_a_source_error_or_typed(key: str, value: Any) -> None:
    entry = _valid_file()
    entry[key] = value
    _check_types({"name": "a", "files": [entry], "meta": {"_last-serial": 1}})


@given(document=JSON)
def test_any_json_document_is_a_source_error_or_typed(document: Any) -> None:
    _check_types(document)


@given(key=st.sampled_from(["name", "files", "meta", "versions"]), value=JSON)
def test_one_wrong_top_level_value_is_a_source_error_or_typed(key: str, value: Any) -> None:
    document: dict[str, Any] = {"name": "a", "files": [_valid_file()], "versions": ["1.0"]}
    document[key] = value
    _check_types(document)


@pytest.mark.parametrize("key", ["upload-time", "requires-python", "yanked"])
def test_a_value_is_read_up_to_its_length_cap(key: str) -> None:
    entry = _valid_file()
    entry[key] = "x" * MAX_VALUE_CHARS
    page = parse_json_project({"name": "a", "files": [entry]}, BASE)
    assert len(page.files) == 1
    entry[key] += "x"
    with pytest.raises(SourceError, match=f"{key} is longer than {MAX_VALUE_CHARS} characters"):
        parse_json_project({"name": "a", "files": [entry]}, BASE)


@pytest.mark.parametrize(
    ("serial", "expected"), [("26356948", 26356948), (26356948, 26356948), (None, None)]
)
def test_a_project_page_serial_is_read_as_pypi_spells_it(
    serial: object, expected: int | None
) -> None:
    page = parse_json_project({"name": "six", "files": [], "meta": {"_last-serial": serial}}, "six")
    assert page.state.serial == expected


@pytest.mark.parametrize("serial", ["", "12a", "-1", "9" * 30, True, 1.5, -1])
def test_a_serial_that_is_no_serial_number_is_a_source_error(serial: object) -> None:
    with pytest.raises(SourceError, match="_last-serial"):
        parse_json_project({"name": "six", "files": [], "meta": {"_last-serial": serial}}, "six")


_LINK_PARTS = ["a", "b.whl", ".", "..", "", "/", "//", ":", "https:", "http://h", "?q", "#f"]
_LINK_PARTS += [";p", " ", "\t", "%2F", "\\", "x:y", "files", "h.org", "./", "../", "[", "]"]
_LINK_PARTS += ["@", ":8", "HTTPS://h", "https://h/", "\u00e9", ".a", "..."]
_BASES = ["http://h/simple/p/", "https://h/simple/p", "http://h/simple/p/?x#y", "http://h"]
_BASES += ["http://h//simple/p/", "https://h/a/b/c/d/"]


@given(st.sampled_from(_BASES), st.lists(st.sampled_from(_LINK_PARTS), max_size=8).map("".join))
@example("http://h/simple/p/", "http://h")  # a host, not a folder
@example("http://h/simple/p/", "//h")
@example("http://h/simple/p/", "a/..")
@example("http://h/simple/p/", "a/x:y")  # no scheme once inside a folder ...
@example("http://h/simple/p/", "x:y")  # ... but here a scheme
@example("http://h/simple/p/?x", "../../files/b.whl")
@example("http://h/simple/p/", "https://files.example/packages/ab/b.whl")
@example("http://h/simple/p/", "https://h:8/a//./b/c.whl")
@example("https://h/a/b/c/d/", "../../packages/4e/3a/../b.whl")
@example("http://h//simple/p/", "../../../packages/4e//3a/b.whl")
@example("http://h/simple/p/", "../x:y/a/b.whl")
def test_a_link_is_joined_as_urljoin_joins_it(base: str, link: str) -> None:
    """Links are joined folder by folder for speed; the result is urljoin's, scheme included."""
    url = urljoin(base, link)
    assert join_link(base, link) == (url, urlsplit(url).scheme)
