"""A source's PEP 691 pages read value by value, and each bad value's exact message.

Written for what mutmut showed untested in ``metasrv.index.pages``: the typed-or-error tests in
``tests/test_pages.py`` check that a bad page is refused, not what it says or what a good page
gives.
"""

from __future__ import annotations

from typing import Any

import pytest

from metasrv.errors import SourceError
from metasrv.index.pages import join_link, parse_json_project, parse_serial

BASE = "https://index.test/simple/a/"
FILES = "https://index.test/files/"
WHEEL = "a-1.0-py3-none-any.whl"
WHERE = f"{BASE}: file {WHEEL!r}"


def _entry(**values: Any) -> dict[str, Any]:
    return {"filename": WHEEL, "url": f"../../files/{WHEEL}", **values}


def _parsed(entry: dict[str, Any]) -> Any:
    (source_file,) = parse_json_project({"name": "a", "files": [entry]}, BASE).files
    return source_file


def _message(document: Any) -> str:
    with pytest.raises(SourceError) as raised:
        parse_json_project(document, BASE)
    return str(raised.value)


def test_a_json_file_entry_gives_each_of_its_values() -> None:
    entry = _entry(
        hashes={"sha256": "ab" * 32},
        size=0,
        yanked="broken",
        **{"requires-python": ">=3.8", "upload-time": "2024-01-02T03:04:05Z"},
    )
    source_file = _parsed(entry)
    assert source_file.url == FILES + WHEEL
    assert source_file.hashes == {"sha256": "ab" * 32}
    assert source_file.size == 0
    assert source_file.yanked == "broken"
    assert source_file.requires_python == ">=3.8"
    assert source_file.upload_time == "2024-01-02T03:04:05Z"
    assert _parsed(_entry(size=2**63 - 1)).size == 2**63 - 1


def test_a_json_file_entry_without_optional_values_gives_their_defaults() -> None:
    source_file = _parsed(_entry(**{"requires-python": ""}))
    assert source_file.hashes == {}
    assert source_file.size is None
    assert source_file.yanked is False
    assert source_file.requires_python is None
    assert source_file.core_metadata is False


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"core-metadata": {"sha256": "cd"}}, {"sha256": "cd"}),
        ({"dist-info-metadata": {"sha256": "ef"}}, {"sha256": "ef"}),
        ({"core-metadata": True, "dist-info-metadata": {"sha256": "ef"}}, True),
        ({"dist-info-metadata": True}, True),
    ],
)
def test_a_json_files_metadata_is_pep_714s_key_then_pep_658s(
    values: dict[str, Any], expected: Any
) -> None:
    assert _parsed(_entry(**values)).core_metadata == expected


def test_a_json_pages_versions_are_read_in_order() -> None:
    page = parse_json_project({"name": "a", "files": [], "versions": ["1.0", "0.9"]}, BASE)
    assert page.versions == ("1.0", "0.9")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], f"{BASE}: the page must be an object, not []"),
        ({"name": "a", "files": {}}, f"{BASE}: files must be an array, not {{}}"),
        ({"name": "a", "files": [], "meta": []}, f"{BASE}: meta must be an object, not []"),
        (
            {"name": "a", "files": [], "versions": {}},
            f"{BASE}: versions must be an array, not {{}}",
        ),
        ({"name": 1, "files": []}, f"{BASE}: name must be a string, not 1"),
        (
            {"name": "a", "files": [], "versions": [1]},
            f"{BASE}: versions: a version must be a string, not 1",
        ),
        (
            {"name": "a", "files": [], "meta": {"_last-serial": "x"}},
            f"{BASE}: meta: _last-serial must be a serial number, not 'x'",
        ),
    ],
)
def test_a_json_page_of_the_wrong_shape_is_a_source_error_saying_where_and_what(
    document: Any, message: str
) -> None:
    assert _message(document) == message


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"filename": 1}, f"{BASE}: file: filename must be a string, not 1"),
        (_entry(url=1), f"{WHERE}: url must be a string, not 1"),
        (
            _entry(url="ftp://h/a.whl"),
            f"{WHERE}: url scheme is not http(s) or file: 'ftp://h/a.whl'",
        ),
        (
            _entry(**{"core-metadata": 1}),
            f"{WHERE}: core-metadata must be a boolean or an object of hashes, not 1",
        ),
        (
            _entry(**{"core-metadata": {"sha256": "zz"}}),
            f"{WHERE}: core-metadata['sha256'] is no hex digest: 'zz'",
        ),
        (_entry(hashes={"sha256": "zz"}), f"{WHERE}: hashes['sha256'] is no hex digest: 'zz'"),
        (_entry(size="1"), f"{WHERE}: size must be an integer or null, not '1'"),
        (_entry(size=True), f"{WHERE}: size must be an integer or null, not True"),
        (_entry(size=-1), f"{WHERE}: size -1 is out of range"),
        (_entry(size=2**63), f"{WHERE}: size {2**63} is out of range"),
        (
            _entry(**{"requires-python": 1}),
            f"{WHERE}: requires-python must be a string or null, not 1",
        ),
        (_entry(yanked=1), f"{WHERE}: yanked must be a boolean or a reason string, not 1"),
        (_entry(**{"upload-time": 1}), f"{WHERE}: upload-time must be a string or null, not 1"),
    ],
)
def test_a_json_file_value_of_the_wrong_type_is_a_source_error_saying_where_and_what(
    entry: dict[str, Any], message: str
) -> None:
    assert _message({"name": "a", "files": [entry]}) == message


def test_a_long_file_name_or_url_is_cut_to_100_characters_in_a_message() -> None:
    filename, url = "a" * 150, "ftp://h/" + "b" * 150
    message = _message({"name": "a", "files": [{"filename": filename, "url": url}]})
    assert (
        message
        == f"{BASE}: file {filename[:100]!r}: url scheme is not http(s) or file: {url[:100]!r}"
    )


@pytest.mark.parametrize(
    ("link", "expected"), [("a/.", BASE + "a/"), ("a/..", BASE), ("a/./b.whl", BASE + "a/b.whl")]
)
def test_a_link_ending_in_a_dot_segment_is_joined_as_a_folder(link: str, expected: str) -> None:
    assert join_link(BASE, link) == (expected, "https")


def test_a_link_urljoin_refuses_is_named_by_its_first_100_characters() -> None:
    link = "//[" + "x" * 150
    with pytest.raises(SourceError) as raised:
        join_link(BASE, link)
    assert str(raised.value).startswith(f"{link[:100]!r} is no URL: ")


@pytest.mark.parametrize(
    ("serial", "expected"), [(0, 0), ("0", 0), (2**63 - 1, 2**63 - 1), ("9" * 18, int("9" * 18))]
)
def test_a_serial_is_read_from_zero_up_to_the_largest_signed_64_bit_number(
    serial: object, expected: int
) -> None:
    assert parse_serial(serial, "page") == expected


def test_a_serial_past_the_largest_signed_64_bit_number_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="page: _last-serial must be a serial number"):
        parse_serial(2**63, "page")


def test_a_serial_sent_as_a_string_is_read_as_the_same_integer_would_be() -> None:
    assert parse_serial(str(10**18), "page") == 10**18
    assert parse_serial(str(2**63 - 1), "page") == 2**63 - 1
    # 2**63 is converted, then out of range; 20 digits are refused unconverted.
    for too_large, shown in ((str(2**63), str(2**63)), ("1" + "0" * 19, repr("1" + "0" * 19))):
        with pytest.raises(SourceError, match=f"_last-serial must be a serial number, not {shown}"):
            parse_serial(too_large, "page")
