from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import canonicalize_name

from metasrv.errors import InvalidInput
from metasrv.names import (
    name_from_path,
    normalize_name,
    parse_version,
    project_path,
    validate_label,
)

pep508_names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,30}[A-Za-z0-9])?", fullmatch=True)


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("Flask", "flask"),
        ("Foo.Bar_baz", "foo-bar-baz"),
        ("a", "a"),
        ("ZOPE.INTERFACE", "zope-interface"),
        ("pkg__--__x", "pkg-x"),
    ],
)
def test_names_normalize_as_pep_503_says(name: str, normalized: str) -> None:
    assert normalize_name(name) == normalized


@pytest.mark.parametrize(
    "name",
    ["", "-flask", "flask-", "fl@sk", "..", "../etc", "a/b", "x\x00y", "naïve", "a" * 201],
)
def test_malformed_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidInput):
        normalize_name(name)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("a", "a/ca/a.toml"),
        ("flask", "fl/b8/flask.toml"),
        ("python-dateutil", "py/79/python-dateutil.toml"),
    ],
)
def test_projects_are_sharded_by_prefix_and_hash(name: str, path: str) -> None:
    assert project_path(normalize_name(name)) == path


@given(pep508_names)
def test_normalization_is_idempotent_and_agrees_with_packaging(name: str) -> None:
    normalized = normalize_name(name)
    assert normalize_name(normalized) == normalized == canonicalize_name(name)


@given(pep508_names)
def test_every_path_is_safe_and_maps_back_to_its_name(name: str) -> None:
    normalized = normalize_name(name)
    path = project_path(normalized)
    assert re.fullmatch(r"[a-z0-9-]{1,2}/[0-9a-f]{2}/[a-z0-9-]+\.toml", path)
    assert ".." not in path
    assert name_from_path(path) == normalized


@pytest.mark.parametrize("path", ["fl/00/flask.toml", "fl/b8/Flask.toml", "README.md", "fl/b8/x"])
def test_paths_that_are_not_a_projects_file_map_to_no_name(path: str) -> None:
    assert name_from_path(path) is None


@pytest.mark.parametrize(("text", "equal_to"), [("2.0", "2.0.0"), ("1.0.POST1", "1.0.post1")])
def test_versions_compare_by_pep_440(text: str, equal_to: str) -> None:
    assert parse_version(text) == parse_version(equal_to)


@pytest.mark.parametrize("text", ["", "not a version", "1.0+", "1" * 101])
def test_malformed_versions_are_rejected(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_version(text)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a" * 201, "project name is longer than 200 characters"),
        ("fl@sk", "invalid project name 'fl@sk': expected a PEP 508 name"),
    ],
)
def test_a_rejected_name_is_named_with_what_was_expected(name: str, message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        normalize_name(name)
    assert raised.value.message == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1" * 101, "version is longer than 100 characters"),
        ("1.0+", "invalid version '1.0+': expected a PEP 440 version"),
    ],
)
def test_a_rejected_version_is_named_with_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_version(text)
    assert raised.value.message == message


def test_the_longest_name_and_version_accepted_are_at_the_limits() -> None:
    assert normalize_name("A" * 200) == "a" * 200
    assert str(parse_version("1" * 100)) == "1" * 100


@pytest.mark.parametrize(
    "path",
    ["fl/b8/flask.toml/x", "b8/flask.toml", "fl/b8/flask.json", "fl/b8/.toml", "fl/b8/f_l.toml"],
)
def test_paths_of_the_wrong_shape_map_to_no_name(path: str) -> None:
    assert name_from_path(path) is None


@pytest.mark.parametrize("label", ["a", "0", "pallets", "audit_2-x", "a" * 64])
def test_a_label_is_lowercase_letters_digits_dash_and_underscore(label: str) -> None:
    assert validate_label(label, "understanding name") == label


@pytest.mark.parametrize(
    "label", ["", "-a", "_a", "Pallets", "a.b", "a b", "a/b", "a" * 65, "naïve", "a\n"]
)
def test_anything_else_is_not_a_label(label: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_label(label, "marker set name")
    assert raised.value.message == (
        f"invalid marker set name {label[:80]!r}: use lowercase letters, digits, - and _ "
        "(at most 64)"
    )


def test_a_long_bad_label_is_echoed_back_cut_short() -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_label("X" * 1000, "understanding name")
    assert f"{'X' * 80!r}:" in raised.value.message
    assert "X" * 81 not in raised.value.message
