"""A source's PEP 691 page: any JSON at all is a typed page or a SourceError, nothing else."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from metasrv.errors import SourceError
from metasrv.index.pages import (
    MAX_VALUE_CHARS,
    SourceFile,
    join_link,
    parse_html_listing,
    parse_html_project,
    parse_json_listing,
    parse_json_project,
)

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
@example("http://h/simple/p/", "//[")
@example("http://h/simple/p/", "http://[::1/x.whl")
@example("http://h/simple/p/", "//[/x.whl")
def test_a_link_is_joined_as_urljoin_joins_it(base: str, link: str) -> None:
    """Links are joined folder by folder for speed; the result is urljoin's, scheme included.
    A link urljoin refuses is a source error."""
    try:
        url = urljoin(base, link)
    except ValueError:
        with pytest.raises(SourceError, match="is no URL"):
            join_link(base, link)
        return
    assert join_link(base, link) == (url, urlsplit(url).scheme)


def _html_files(anchors: str, page_url: str = BASE) -> list[SourceFile]:
    page = parse_html_project(f"<!DOCTYPE html><html><body>{anchors}</body></html>", page_url, "a")
    assert page.name == "a"
    return list(page.files)


def test_an_html_page_gives_each_links_hashes_yank_python_and_metadata() -> None:
    digest = "ab" * 32
    anchors = (
        f'<a href="../../files/a-1.0.tar.gz#sha256={digest}" data-requires-python="&gt;=3.8">'
        "a-1.0.tar.gz</a><br/>"
        '<a href="../../files/a-1.0-py3-none-any.whl#md5=00" data-yanked="broken build"'
        ' data-core-metadata="sha256=cd">a-1.0-py3-none-any.whl</a><br/>'
        '<a href="../../files/a-0.9.zip" data-yanked data-dist-info-metadata="true">a-0.9.zip</a>'
        '<a href="../../files/a-0.8.zip#top" data-requires-python="" data-yanked="">a-0.8.zip</a>'
    )
    files = "https://index.test/files/"
    assert _html_files(anchors) == [
        SourceFile(
            "a-1.0.tar.gz", f"{files}a-1.0.tar.gz", {"sha256": digest}, requires_python=">=3.8"
        ),
        SourceFile(
            "a-1.0-py3-none-any.whl",
            f"{files}a-1.0-py3-none-any.whl",
            {"md5": "00"},
            yanked="broken build",
            core_metadata={"sha256": "cd"},
        ),
        SourceFile("a-0.9.zip", f"{files}a-0.9.zip", {}, yanked=True, core_metadata=True),
        SourceFile("a-0.8.zip", f"{files}a-0.8.zip", {}, yanked=True),
    ]


def test_an_html_links_hash_name_and_metadata_hash_name_end_at_the_first_equals_sign() -> None:
    (listed,) = _html_files('<a href="a-1.0.zip#sha256=ab=c" data-core-metadata="md5=d=e">x</a>')
    assert (listed.hashes, listed.core_metadata) == ({"sha256": "ab=c"}, {"md5": "d=e"})


def test_an_html_page_links_files_relative_to_its_base_element_the_first_one() -> None:
    anchors = (
        '<head><base href="../../mirror/"><base href="https://elsewhere.test/"></head>'
        '<a href="a-1.0.zip">a-1.0.zip</a>'
    )
    (listed,) = _html_files(anchors)
    assert listed.url == "https://index.test/mirror/a-1.0.zip"


def test_an_html_link_to_the_page_itself_is_the_page_without_its_fragment() -> None:
    (listed,) = _html_files('<a href="#sha256=ab">a-1.0.zip</a>', BASE + "#files")
    assert (listed.url, listed.hashes) == (BASE, {"sha256": "ab"})


def test_an_html_link_without_text_is_named_by_its_urls_last_segment() -> None:
    files = _html_files('<a href="../../files/a-1.0.zip#sha256=ab"></a><a href="file:b.zip"></a>')
    assert [listed.filename for listed in files] == ["a-1.0.zip", "file:b.zip"]


def test_an_html_links_text_is_all_the_text_inside_it_unescaped() -> None:
    (listed,) = _html_files('</a><a href="x"><b>a&#45;1.0</b>.zip</a></a><p>after</p>')
    assert listed.filename == "a-1.0.zip"


def test_html_anchors_without_a_href_or_to_no_file_are_skipped_not_the_ones_after() -> None:
    anchors = (
        '<a name="top">top</a><a href="mailto:a@index.test">mail</a>'
        '<a href="ftp://index.test/a-0.1.zip">a-0.1.zip</a><a href="a-1.0.zip">a-1.0.zip</a>'
    )
    assert [listed.filename for listed in _html_files(anchors)] == ["a-1.0.zip"]


def test_an_html_attribute_over_the_length_cap_is_a_source_error_naming_the_page() -> None:
    anchors = f'<a href="a-1.0.zip" data-yanked="{"x" * (MAX_VALUE_CHARS + 1)}">a-1.0.zip</a>'
    message = f"{BASE}: a link attribute is longer than {MAX_VALUE_CHARS} characters"
    with pytest.raises(SourceError, match=re.escape(message)):
        _html_files(anchors)


def test_an_html_root_page_lists_the_text_of_each_link_that_has_both() -> None:
    html = (
        '<a href="/simple/a-b/">a&#45;b</a><a href="/simple/c/"></a><a>d</a>'
        '<a href="/simple/e/"><span>e</span></a>'
    )
    assert parse_html_listing(html) == ["a-b", "e"]


_WHERE = f"{BASE}: file 'a-1.0-py3-none-any.whl'"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (None, f"{BASE}: file: a file entry must be an object, not None"),
        ({"hashes": []}, f"{_WHERE}: hashes must be an object, not []"),
        ({"hashes": {"SHA256": "ab"}}, f"{_WHERE}: hashes has a hash name that is none: 'SHA256'"),
        ({"hashes": {1: "ab"}}, f"{_WHERE}: hashes has a hash name that is none: 1"),
    ],
)
def test_a_json_file_entry_of_the_wrong_shape_is_a_source_error_saying_where_and_what(
    change: dict[str, Any] | None, message: str
) -> None:
    entry = None if change is None else {**_valid_file(), **change}
    with pytest.raises(SourceError) as raised:
        parse_json_project({"name": "a", "files": [entry]}, BASE)
    assert str(raised.value) == message


def test_a_json_root_page_lists_each_projects_name_as_spelt() -> None:
    projects = [{"name": "A_b", "_last-serial": 1}, {"name": "c"}]
    assert parse_json_listing({"meta": {}, "projects": projects}, BASE) == ["A_b", "c"]
    assert parse_json_listing({}, BASE) == []


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "the page must be an object, not []"),
        ({"projects": {}}, "projects must be an array, not {}"),
        ({"projects": ["a"]}, "a project entry must be an object, not 'a'"),
        ({"projects": [{"name": 1}]}, "a project name must be a string, not 1"),
    ],
)
def test_a_json_root_page_of_the_wrong_shape_is_a_source_error_saying_what(
    document: Any, message: str
) -> None:
    with pytest.raises(SourceError) as raised:
        parse_json_listing(document, BASE)
    assert str(raised.value) == f"{BASE}: {message}"
