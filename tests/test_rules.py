"""Rule files and registrations: every key read, checked, and written back as it was spelled."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from metasrv.errors import InvalidData, InvalidInput
from metasrv.names import normalize_name
from metasrv.repo import tomlcodec
from metasrv.understandings.rules import Registration, Rule, RuleFile, rule_path

EVERY_KEY: dict[str, Any] = {
    "id": "everything",
    "versions": ">=2.0 , <3",
    "uploaded-before": "2023-10-01T00:00:00+00:00",
    "files": "py3-none-any",
    "open-ended": True,
    "relax": ["click"],
    "replace": ["Werkzeug >=2.0,<3"],
    "remove": ["Jinja2"],
    "add": ["blinker>=1.6 ; python_version >= '3.8'"],
    "requires-python": ">= 3.8",
    "yank": "broken on 3.12",
    "approve": True,
    "reason": "every key at once",
}


def test_every_key_is_read_into_its_field() -> None:
    rule = Rule.from_toml(EVERY_KEY, "f.toml")
    assert rule == Rule(
        id="everything",
        versions=SpecifierSet(">=2.0,<3"),
        reason="every key at once",
        uploaded_before=datetime(2023, 10, 1, tzinfo=UTC),
        files="py3-none-any",
        open_ended=True,
        relax=(normalize_name("click"),),
        replace=(Requirement("Werkzeug>=2.0,<3"),),
        remove=(normalize_name("jinja2"),),
        add=(Requirement("blinker>=1.6; python_version >= '3.8'"),),
        requires_python=SpecifierSet(">=3.8"),
        yank="broken on 3.12",
        approve=True,
    )


def test_every_key_is_written_back_in_canonical_order_and_as_spelled() -> None:
    table = Rule.from_toml(EVERY_KEY, "f.toml").to_toml()
    assert list(table) == [
        "id",
        "versions",
        "uploaded-before",
        "files",
        "open-ended",
        "relax",
        "replace",
        "remove",
        "add",
        "requires-python",
        "yank",
        "approve",
        "reason",
    ]
    assert table == {**EVERY_KEY, "relax": ["click"], "remove": ["jinja2"]}


def test_a_rule_built_in_code_is_written_in_packagings_spelling() -> None:
    rule = Rule(
        id="r",
        versions=SpecifierSet("<3,>=2"),
        reason="why",
        replace=(Requirement("werkzeug >= 2"),),
        add=(Requirement("blinker>=1"),),
        requires_python=SpecifierSet(">=3.8"),
    )
    table = rule.to_toml()
    assert type(table["versions"]) is type(table["requires-python"]) is str
    assert table == {
        "id": "r",
        "versions": "<3,>=2",
        "replace": ["werkzeug>=2"],
        "add": ["blinker>=1"],
        "requires-python": ">=3.8",
        "reason": "why",
    }


def test_a_minimal_rule_writes_only_what_it_has() -> None:
    table = {"id": "r", "versions": "<3", "yank": "old", "reason": "why"}
    rule = Rule.from_toml(table, "f")
    assert rule == Rule("r", SpecifierSet("<3"), "why", yank="old")
    assert rule.open_ended is False
    assert rule.to_toml() == table


def test_a_rule_that_only_approves_is_a_rule() -> None:
    table = {"id": "r", "versions": "==2.0", "approve": True, "reason": "diff read"}
    rule = Rule.from_toml(table, "f")
    assert rule.approve is True
    assert rule.to_toml() == table


def test_rule_files_round_trip_through_toml_text() -> None:
    document = {
        "format": 1,
        "project": "Flask",
        "rules": [EVERY_KEY, {"id": "b", "versions": "==1.0", "remove": ["x"], "reason": "r"}],
    }
    rule_file = RuleFile.from_toml(document, "f.toml")
    assert rule_file.normalized_name == "flask"
    text = tomlcodec.dumps(rule_file.to_toml())
    assert RuleFile.from_toml(tomlcodec.loads(text, where="x"), "x") == rule_file
    assert tomlcodec.dumps(RuleFile.from_toml(tomlcodec.loads(text, where="x"), "x").to_toml()) == (
        text
    )


@pytest.mark.parametrize(
    ("versions", "uploaded_before", "bounded"),
    [
        ("<3", None, True),
        ("<=3", None, True),
        ("==2.1", None, True),
        ("===2.1", None, True),
        ("~=2.1", None, True),
        (">=2", None, False),
        ("!=2.1", None, False),
        (">2,!=2.5", None, False),
        (">=2", "2024-01-01T00:00:00+00:00", True),
    ],
)
def test_a_rule_is_bounded_when_future_releases_cannot_match(
    versions: str, uploaded_before: str | None, bounded: bool
) -> None:
    table = {"id": "r", "versions": versions, "yank": "x", "reason": "r"}
    if uploaded_before is not None:
        table["uploaded-before"] = uploaded_before
    assert Rule.from_toml(table, "f").is_bounded is bounded


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"requires-python": ">>3"}, "f (rule 'r'): Invalid specifier: '>>3'"),
        ({"add": ["x>>1"]}, "f (rule 'r'): invalid requirement 'x>>1': Expected"),
        ({"replace": ["x>>1"]}, "f (rule 'r'): invalid requirement 'x>>1': Expected"),
        ({"relax": ["bad name!"]}, "f (rule 'r'): invalid project name 'bad name!'"),
        ({"versions": "=>1", "yank": "x"}, "f (rule 'r'): Invalid specifier: '=>1'"),
        ({"remove": ["bad name!"]}, "f (rule 'r'): invalid project name 'bad name!'"),
        (
            {"yank": "x", "files": "py3-none"},
            "f (rule 'r'): 'files' must be wheels, sdists or a wheel tag",
        ),
        ({"relax": []}, "f (rule 'r'): changes nothing; give one of relax, replace, remove, add"),
        ({"id": 3}, "f: 'id' must be a string"),
    ],
)
def test_a_bad_rule_names_its_file_its_id_and_the_problem(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidData) as raised:
        Rule.from_toml({"id": "r", "versions": "<3", "reason": "r", **fields}, "f")
    assert str(raised.value.message).startswith(message)


@pytest.mark.parametrize("files", ["wheels", "sdists", "py2.py3-none-any", "cp311-abi3-linux"])
def test_a_file_filter_is_a_kind_or_a_wheel_tag(files: str) -> None:
    table = {"id": "r", "versions": "<3", "yank": "x", "reason": "r", "files": files}
    assert Rule.from_toml(table, "f").files == files


def test_a_rule_file_names_the_index_of_a_bad_rule() -> None:
    document = {
        "format": 1,
        "project": "Flask",
        "rules": [{"id": "a", "versions": "<3", "yank": "x", "reason": "r"}, {"id": "b"}],
    }
    with pytest.raises(InvalidData, match=r"^f.toml: rules\[1\]: missing key 'versions'"):
        RuleFile.from_toml(document, "f.toml")


def test_a_rule_file_with_an_unknown_key_is_rejected() -> None:
    with pytest.raises(InvalidData, match=r"^f\.toml: unknown key 'colour'"):
        RuleFile.from_toml({"format": 1, "project": "Flask", "colour": "blue"}, "f.toml")


@pytest.mark.parametrize(
    ("folder", "path"),
    [
        ("", "fl/b8/flask.toml"),
        ("/", "fl/b8/flask.toml"),
        ("understandings/pallets", "understandings/pallets/fl/b8/flask.toml"),
        ("/understandings/pallets/", "understandings/pallets/fl/b8/flask.toml"),
        ("Xrules/X", "Xrules/X/fl/b8/flask.toml"),
    ],
)
def test_a_rule_file_sits_at_its_projects_path_in_the_folder(folder: str, path: str) -> None:
    assert rule_path(folder, normalize_name("Flask")) == path


def test_a_registration_on_another_branch_round_trips() -> None:
    document = {
        "format": 1,
        "name": "audit",
        "description": "audited pins",
        "repository": "https://git.example/audit.git",
        "branch": "stable",
        "folder": "rules",
        "allowed-signers": "understandings/audit.allowed_signers",
        "gate": True,
    }
    registration = Registration.from_toml(document, "understandings/audit.toml")
    assert registration == Registration(
        "audit",
        "audited pins",
        "https://git.example/audit.git",
        "stable",
        "rules",
        "understandings/audit.allowed_signers",
        gate=True,
    )
    assert not registration.is_embedded
    assert registration.to_toml() == document


def test_a_registration_defaults_to_main_the_whole_repository_and_no_gate() -> None:
    document = {"format": 1, "name": "pallets", "description": "d", "repository": "."}
    registration = Registration.from_toml(document, "x")
    assert (registration.branch, registration.folder, registration.gate) == ("main", "", False)
    assert registration.allowed_signers is None
    assert registration.is_embedded
    assert registration.to_toml() == {**document, "branch": "main"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"allowed-signers": "x"}, "x: 'allowed-signers' needs a repository of its own, not '.'"),
        ({"gate": "yes"}, "x: 'gate' must be a boolean"),
        ({"colour": "blue"}, "unknown key 'colour'"),
    ],
)
def test_a_bad_registration_names_the_problem(fields: dict[str, Any], message: str) -> None:
    document = {"format": 1, "name": "pallets", "description": "d", "repository": ".", **fields}
    with pytest.raises(InvalidData, match=message):
        Registration.from_toml(document, "x")


def test_a_registration_with_a_bad_name_is_refused() -> None:
    document = {"format": 1, "name": "Bad Name", "description": "d", "repository": "."}
    with pytest.raises(InvalidInput, match="invalid understanding name 'Bad Name'"):
        Registration.from_toml(document, "x")
