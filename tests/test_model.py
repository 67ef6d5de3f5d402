from __future__ import annotations

import tomllib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metasrv.errors import InvalidData
from metasrv.model import CoreMetadata, MetadataStatus, Project, Release
from metasrv.repo import tomlcodec
from metasrv.repo.projectfile import registered_name
from tests.builders import make_file, make_project

requirement_lists = st.lists(
    st.sampled_from(
        ["a>=1", "b<2; python_version < '3.12'", "c[x]", "d (==1.0)", 'e ; extra == "t"']
    ),
    max_size=4,
    unique=True,
)


def test_a_release_stores_the_metadata_most_files_share_once() -> None:
    common = ["Werkzeug>=2.0"]
    release = Release.from_files(
        "2.0",
        (
            make_file("x-2.0-py3-none-any.whl", requires_dist=common),
            make_file("x-2.0-cp311-cp311-linux_x86_64.whl", requires_dist=common),
            make_file("x-2.0-cp27-none-any.whl", requires_dist=["futures"]),
        ),
    )
    project = Project.create("x", [release])
    text = tomlcodec.dumps(project.to_toml()).decode()
    assert text.count("Werkzeug>=2.0") == 1
    assert text.count("futures") == 1
    parsed = Project.from_toml(tomllib.loads(text), "x.toml")
    files = {f.filename: f for f in parsed.releases[0].files}
    assert files["x-2.0-cp27-none-any.whl"].metadata is not None
    assert files["x-2.0-cp27-none-any.whl"].metadata.requires_dist == ("futures",)
    assert files["x-2.0-py3-none-any.whl"].metadata == parsed.releases[0].metadata
    assert parsed == project


def test_a_file_whose_metadata_could_not_be_read_inherits_nothing() -> None:
    release = Release.from_files(
        "1.0",
        (
            make_file("x-1.0-py3-none-any.whl", requires_dist=["a"]),
            make_file("x-1.0.tar.gz", metadata=False),
        ),
    )
    project = Project.create("x", [release])
    parsed = Project.from_toml(tomllib.loads(tomlcodec.dumps(project.to_toml()).decode()), "x")
    sdist = next(f for f in parsed.releases[0].files if f.filename.endswith(".tar.gz"))
    assert sdist.metadata is None
    assert sdist.metadata_status is MetadataStatus.PENDING


def test_a_release_is_yanked_only_when_every_file_is() -> None:
    one = Release.from_files("1", (make_file("a.whl", yanked="broken"), make_file("b.tar.gz")))
    both = Release.from_files(
        "1", (make_file("a.whl", yanked="broken"), make_file("b.tar.gz", yanked=True))
    )
    assert one.yanked is False
    assert both.yanked == "broken"


def test_releases_are_kept_in_pep_440_order() -> None:
    project = make_project("x", ["1.10", "1.9", "1.0rc1", "1.0"])
    assert [r.version_text for r in project.releases] == ["1.0rc1", "1.0", "1.9", "1.10"]


def test_two_spellings_of_one_version_are_rejected() -> None:
    with pytest.raises(InvalidData, match="are equal"):
        make_project("x", ["2.0", "2.0.0"])


def test_the_registered_name_is_read_without_parsing_releases() -> None:
    text = tomlcodec.dumps(make_project("Gamma_Pkg", ["1"]).to_toml())
    assert registered_name(text, "x") == "Gamma_Pkg"


def _document(**overrides: Any) -> dict[str, Any]:
    document = make_project("x", {"1.0": ["a"]}).to_toml()
    document.update(overrides)
    return document


def _file_document(keys: dict[str, Any], format_version: int = 2) -> dict[str, Any]:
    dist_file = {"filename": "x-1.0.tar.gz", "url": "u", "hashes": {}, **keys}
    return {"format": format_version, "name": "x", "releases": {"1.0": {"files": [dist_file]}}}


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (
            "not read: the release's wheels give its metadata",
            MetadataStatus.SKIPPED,
            "the release's wheels give its metadata",
        ),
        (
            "sdist metadata 2.1 does not declare static fields",
            MetadataStatus.DYNAMIC,
            "sdist metadata 2.1 does not declare static fields",
        ),
        (
            "fetch failed: https://x/f: HTTP 500 after 5 attempts",
            MetadataStatus.FETCH_FAILED,
            "https://x/f: HTTP 500 after 5 attempts",
        ),
        ("not read yet", MetadataStatus.PENDING, "not read yet"),
        (
            "hash mismatch: PEP 658 metadata file",
            MetadataStatus.UNUSABLE,
            "hash mismatch: PEP 658 metadata file",
        ),
        ("corrupt wheel: bad zip", MetadataStatus.UNUSABLE, "corrupt wheel: bad zip"),
    ],
)
def test_a_format_1_metadata_error_is_read_as_a_status_and_written_as_format_2(
    error: str, status: MetadataStatus, reason: str
) -> None:
    project = Project.from_toml(_file_document({"metadata-error": error}, 1), "x")
    dist_file = project.releases[0].files[0]
    assert (dist_file.metadata_status, dist_file.metadata_reason, dist_file.metadata) == (
        status,
        reason,
        None,
    )
    rewritten = project.to_toml()
    assert rewritten["format"] == 2
    assert rewritten["releases"]["1.0"]["files"][0]["metadata-status"] == status.value
    assert Project.from_toml(rewritten, "x") == project


def test_a_built_file_keeps_its_metadata_even_where_the_release_agrees() -> None:
    metadata = CoreMetadata("2.4", requires_dist=("a",))
    built = replace(
        make_file("x-1.0.tar.gz", metadata=metadata),
        metadata_status=MetadataStatus.BUILT,
        metadata_built_on="CPython 3.11.7 linux x86_64",
    )
    project = Project.create("x", [Release.from_files("1.0", (built,))])
    document = project.to_toml()
    assert document["releases"]["1.0"]["files"][0]["metadata"] == metadata.to_toml()
    assert Project.from_toml(document, "x") == project


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (_document(format=3), "unsupported format"),
        (_document(name=3), "'name' must be a string"),
        (_document(extra="x"), "unknown key 'extra'"),
        (_document(releases={"not a version": {}}), "invalid version"),
        (_document(releases={"1.0": {"files": [{"filename": "f"}]}}), "missing key 'url'"),
        (
            _document(
                releases={
                    "1.0": {"files": [{"filename": "f", "url": "u", "hashes": {}, "size": True}]}
                }
            ),
            "'size' must be an integer",
        ),
        # JSON answers carry it as a 64-bit integer: a larger one would fail each answer.
        (_file_document({"size": 2**63}), "'size' is out of the 64-bit range"),
        (_file_document({"size": -(2**63) - 1}), "'size' is out of the 64-bit range"),
        (
            _document(releases={"1.0": {"metadata": {"requires-dist": ["a"]}}}),
            "missing key 'metadata-version'",
        ),
        ({"name": "x", "releases": {}}, "missing key 'format'"),
        (_file_document({"metadata-status": "broken"}), "unknown metadata-status 'broken'"),
        (_file_document({"metadata-reason": "why"}), "'metadata-reason' without"),
        (_file_document({"metadata-error": "old"}), "unknown key 'metadata-error'"),
        (_file_document({"metadata-status": "built"}), "a built file needs"),
        (
            _file_document({"metadata-status": "skipped", "metadata": {"metadata-version": "2.1"}}),
            "a file whose metadata is skipped has no 'metadata'",
        ),
        (_file_document({"metadata-built-on": "CPython"}), "'metadata-built-on' belongs"),
    ],
)
def test_malformed_project_files_name_the_problem(document: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidData, match=message):
        Project.from_toml(document, "data/x.toml")


def test_integers_at_the_edges_of_64_bits_are_read() -> None:
    for size in (2**63 - 1, -(2**63)):
        project = Project.from_toml(_file_document({"size": size}), "data/x.toml")
        assert project.releases[0].files[0].size == size


@given(
    versions=st.dictionaries(
        st.from_regex(r"[1-9][0-9]?(\.[0-9]){0,2}", fullmatch=True), requirement_lists, max_size=5
    ),
    name=st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,10}[A-Za-z0-9]", fullmatch=True),
)
def test_project_files_round_trip_byte_for_byte(versions: dict[str, list[str]], name: str) -> None:
    unique: dict[str, list[str]] = {}
    for version, deps in versions.items():
        if all(
            Release.from_files(version, ()).version != Release.from_files(v, ()).version
            for v in unique
        ):
            unique[version] = deps
    project = make_project(name, unique)
    text = tomlcodec.dumps(project.to_toml())
    parsed = Project.from_toml(tomlcodec.loads(text, where="x"), "x")
    assert parsed == project
    assert tomlcodec.dumps(parsed.to_toml()) == text


@given(reason=st.text(max_size=40))
def test_any_yank_reason_round_trips_escaped_where_it_must_be(reason: str) -> None:
    # A file entry's strings are written verbatim when TOML allows it, else escaped.
    release = Release.from_files("1.0", (make_file("x-1.0-py3-none-any.whl", yanked=reason),))
    project = Project.create("x", [release])
    text = tomlcodec.dumps(project.to_toml())
    assert Project.from_toml(tomllib.loads(text.decode()), "x.toml") == project
    if reason.isascii() and reason.isprintable() and not set(reason) & set('"\\'):
        assert f'\nyanked = "{reason}"\n'.encode() in text


def test_metadata_omits_empty_fields() -> None:
    assert CoreMetadata("2.1").to_toml() == {"metadata-version": "2.1"}
