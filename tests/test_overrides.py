"""How rules change a release: one rule, rules in order, understandings in client order."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet

from metasrv.errors import InvalidData
from metasrv.model import Release
from metasrv.understandings.overrides import (
    Layer,
    PatchedRelease,
    apply_layers,
    relax_specifier,
    selects_file,
)
from metasrv.understandings.rules import Rule, RuleFile
from tests.builders import make_file

BASE_RULE: dict[str, Any] = {"id": "r", "versions": "<3", "reason": "because"}


def rule(**fields: Any) -> Rule:
    return Rule.from_toml({**BASE_RULE, **fields}, "test")


def layer(*rules: Rule, name: str = "u") -> Layer:
    return Layer(name, "c" * 40, "x/fl/b8/flask.toml", RuleFile("Flask", rules))


def flask(version: str = "2.2.5", *files_deps: list[str]) -> Release:
    deps = files_deps or (["Werkzeug>=2.2.2", "Jinja2>=3.0", "click>=8.0"],)
    files = tuple(
        make_file(
            f"Flask-{version}-{['py3', 'py2'][i]}-none-any.whl",
            requires_dist=d,
            requires_python=">=3.7",
        )
        for i, d in enumerate(deps)
    )
    return Release.from_files(
        version,
        (
            *files,
            make_file(f"flask-{version}.tar.gz", requires_dist=deps[0], requires_python=">=3.7"),
        ),
    )


@pytest.mark.parametrize(
    ("specifier", "relaxed"),
    [
        (">=2.0,<3", ">=2.0"),
        ("<=2.5", ""),
        ("==2.*", ">=2"),
        ("==2.1", ">=2.1"),
        ("~=2.1", ">=2.1"),
        (">=1,!=1.5,<2", "!=1.5,>=1"),
    ],
)
def test_relaxing_drops_upper_bounds_only(specifier: str, relaxed: str) -> None:
    assert relax_specifier(SpecifierSet(specifier)) == SpecifierSet(relaxed)


def test_replace_keeps_the_marker_and_records_provenance() -> None:
    release = flask("2.2.5", ["Werkzeug>=2.2.2; python_version >= '3.7'", "click>=8.0"])
    patched = apply_layers(
        release, [layer(rule(replace=["werkzeug>=2.2.2,<3"], versions=">=2.2,<2.3"))]
    )
    assert patched.release.metadata is not None
    assert (
        patched.release.metadata.requires_dist[0] == 'werkzeug<3,>=2.2.2; python_version >= "3.7"'
    )
    assert patched.release.metadata.requires_dist[1] == "click>=8.0"
    assert patched.original == release
    (patch,) = patched.patches
    assert patch.to_json() == {
        "field": "requires-dist",
        "dependency": "werkzeug",
        "before": "Werkzeug>=2.2.2; python_version >= '3.7'",
        "after": 'werkzeug<3,>=2.2.2; python_version >= "3.7"',
        "understanding": "u",
        "commit": "c" * 40,
        "file": "x/fl/b8/flask.toml",
        "rule": "r",
        "reason": "because",
    }


@pytest.mark.parametrize(
    ("fields", "requires_dist", "requires_python", "yanked"),
    [
        ({"relax": ["Werkzeug"]}, ("Werkzeug>=2.2.2", "Jinja2>=3.0", "click>=8.0"), ">=3.7", False),
        ({"remove": ["jinja2"]}, ("Werkzeug>=2.2.2", "click>=8.0"), ">=3.7", False),
        (
            {"add": ["blinker>=1.6"]},
            ("Werkzeug>=2.2.2", "Jinja2>=3.0", "click>=8.0", "blinker>=1.6"),
            ">=3.7",
            False,
        ),
        (
            {"requires-python": ">=3.8"},
            ("Werkzeug>=2.2.2", "Jinja2>=3.0", "click>=8.0"),
            ">=3.8",
            False,
        ),
        ({"yank": "broken"}, ("Werkzeug>=2.2.2", "Jinja2>=3.0", "click>=8.0"), ">=3.7", "broken"),
    ],
)
def test_each_action_changes_its_field(
    fields: dict[str, Any], requires_dist: tuple[str, ...], requires_python: str, yanked: object
) -> None:
    release = (
        flask("2.2.5", ["Werkzeug>=2.2.2,<3", "Jinja2>=3.0", "click>=8.0"])
        if "relax" in fields
        else flask()
    )
    patched = apply_layers(release, [layer(rule(**fields))]).release
    assert patched.metadata is not None
    assert patched.metadata.requires_dist == requires_dist
    assert patched.metadata.requires_python == requires_python
    assert all(f.requires_python == requires_python for f in patched.files)
    assert patched.yanked == yanked


def test_a_rule_selects_by_version_file_kind_tag_and_upload_time() -> None:
    release = flask()
    only_sdists = apply_layers(release, [layer(rule(files="sdists", yank="x"))]).release
    assert [bool(f.yanked) for f in only_sdists.files] == [False, True]
    only_py3 = apply_layers(release, [layer(rule(files="py3-none-any", yank="x"))]).release
    assert [bool(f.yanked) for f in only_py3.files] == [True, False]
    before_upload = apply_layers(
        release, [layer(rule(**{"uploaded-before": "2024-01-01T00:00:00+00:00", "yank": "x"}))]
    )
    assert before_upload.patches == ()
    after_upload = apply_layers(
        release, [layer(rule(**{"uploaded-before": "2025-01-01T00:00:00+00:00", "yank": "x"}))]
    )
    assert after_upload.release.yanked == "x"
    other_version = apply_layers(release, [layer(rule(versions="<2", yank="x"))])
    assert other_version.release == release
    assert other_version.patches == ()


def test_rules_of_one_understanding_apply_in_file_order() -> None:
    first = rule(id="a", replace=["werkzeug>=2.2.2,<3"])
    second = rule(id="b", relax=["werkzeug"])
    patched = apply_layers(flask(), [layer(first, second)])
    assert patched.release.metadata is not None
    assert patched.release.metadata.requires_dist[0] == "werkzeug>=2.2.2"
    assert [p.rule for p in patched.patches] == ["a", "b"]
    assert patched.conflicts == ()


def test_later_understandings_win_per_field_and_the_conflict_is_reported() -> None:
    tighten = layer(rule(replace=["werkzeug>=2.2.2,<3"]), name="audit")
    loosen = layer(rule(replace=["werkzeug>=2.2.2"]), name="pallets")
    patched = apply_layers(flask(), [tighten, loosen])
    assert patched.release.metadata is not None
    assert patched.release.metadata.requires_dist[0] == "werkzeug>=2.2.2"
    (conflict,) = patched.conflicts
    assert conflict.to_json() == {
        "field": "requires-dist",
        "dependency": "werkzeug",
        "understandings": ["audit", "pallets"],
        "winner": "pallets",
    }
    reversed_order = apply_layers(flask(), [loosen, tighten]).release
    assert reversed_order.metadata is not None
    assert reversed_order.metadata.requires_dist[0] == "werkzeug<3,>=2.2.2"


def test_files_with_their_own_metadata_are_patched_on_their_own() -> None:
    release = flask("2.2.5", ["Werkzeug>=2.2.2"], ["Werkzeug>=1.0", "futures"])
    patched = apply_layers(release, [layer(rule(remove=["futures"]))]).release
    py2 = next(f for f in patched.files if "py2" in f.filename)
    assert py2.metadata is not None
    assert py2.metadata.requires_dist == ("Werkzeug>=1.0",)


requirement_lists = st.lists(
    st.sampled_from(["a>=1", "b<2; python_version < '3.12'", "c[x]>=1,<3", "Werkzeug>=2"]),
    max_size=4,
)


@given(requirement_lists, st.sampled_from(["1.0", "2.2.5", "3.0rc1"]))
def test_an_empty_understanding_changes_nothing(deps: list[str], version: str) -> None:
    release = flask(version, deps)
    empty = Layer("u", "c" * 40, "p", RuleFile("Flask", ()))
    absent = Layer("v", "c" * 40, "p", None)
    patched = apply_layers(release, [empty, absent])
    assert patched.release == release
    assert patched.patches == ()


@given(requirement_lists)
def test_relaxing_never_adds_a_bound_and_is_idempotent(deps: list[str]) -> None:
    once = apply_layers(
        flask("2.0", deps), [layer(rule(relax=["a", "b", "c", "werkzeug"]))]
    ).release
    twice = apply_layers(once, [layer(rule(relax=["a", "b", "c", "werkzeug"]))])
    assert twice.patches == ()
    assert once.metadata is not None
    assert not any("<" in requirement.split(";")[0] for requirement in once.metadata.requires_dist)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"versions": "not a spec"}, "Invalid specifier"),
        ({"replace": ["werkzeug>>3"]}, "Expected"),
        ({"relax": ["not a name!"]}, "invalid project name"),
        ({}, "changes nothing"),
        ({"yank": "x", "files": "eggs"}, "'files' must be"),
        ({"yank": "x", "uploaded-before": "yesterday"}, "not an ISO 8601 time"),
        ({"yank": "x", "open-ended": "yes"}, "'open-ended' must be a boolean"),
        ({"yank": "x", "colour": "blue"}, "unknown key 'colour'"),
    ],
)
def test_malformed_rules_name_the_problem(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidData, match=message):
        Rule.from_toml({**BASE_RULE, **fields}, "test")


def test_two_rules_with_one_id_are_rejected() -> None:
    document = {"format": 1, "project": "Flask", "rules": [{**BASE_RULE, "yank": "x"}] * 2}
    with pytest.raises(InvalidData, match="two rules have the id 'r'"):
        RuleFile.from_toml(document, "f.toml")


def test_rule_files_round_trip() -> None:
    rules = RuleFile(
        "Flask",
        (
            rule(
                replace=["werkzeug>=2.2.2,<3"], **{"uploaded-before": "2023-10-01T00:00:00+00:00"}
            ),
            rule(id="s", versions=">=1", **{"open-ended": True}, files="sdists", yank="old"),
        ),
    )
    assert RuleFile.from_toml(rules.to_toml(), "x") == rules


def changes(patched: PatchedRelease) -> list[tuple[str, str | None, Any, Any]]:
    return [(p.field, p.dependency, p.before, p.after) for p in patched.patches]


def test_an_understanding_without_rules_for_the_project_hides_none_after_it() -> None:
    absent = Layer("first", "c" * 40, "p", None)
    patched = apply_layers(flask(), [absent, layer(rule(yank="broken"), name="second")])
    assert patched.release.yanked == "broken"
    assert [p.understanding for p in patched.patches] == ["second"]


def test_a_rule_for_other_versions_does_not_stop_the_next_rule() -> None:
    skipped = rule(id="a", versions="<2", yank="old")
    applied = rule(id="b", versions=">=2", yank="new")
    patched = apply_layers(flask(), [layer(skipped, applied)])
    assert patched.release.yanked == "new"
    assert [p.rule for p in patched.patches] == ["b"]


def test_a_rule_applies_to_a_pre_release_its_versions_contain() -> None:
    patched = apply_layers(flask("3.0rc1"), [layer(rule(versions=">=2", yank="rc broke"))])
    assert patched.release.yanked == "rc broke"


def test_add_requires_python_and_yank_record_their_provenance() -> None:
    fields = {"add": ["blinker>=1.6"], "requires-python": ">=3.8", "yank": "broken"}
    patched = apply_layers(flask(), [layer(rule(**fields))])
    assert changes(patched) == [
        ("requires-dist", "blinker", None, "blinker>=1.6"),
        ("requires-python", None, ">=3.7", ">=3.8"),
        ("yanked", None, False, "broken"),
    ]
    for patch in patched.patches:
        assert (patch.understanding, patch.commit, patch.file, patch.rule, patch.reason) == (
            "u",
            "c" * 40,
            "x/fl/b8/flask.toml",
            "r",
            "because",
        )


def test_one_change_to_several_files_is_one_patch() -> None:
    patched = apply_layers(flask(), [layer(rule(yank="broken"))])
    assert all(f.yanked == "broken" for f in patched.release.files)
    assert changes(patched) == [("yanked", None, False, "broken")]


def test_adding_a_requirement_already_present_changes_nothing() -> None:
    patched = apply_layers(flask(), [layer(rule(add=["click>=8.0"]))])
    assert patched.patches == ()
    assert patched.release == flask()


def test_a_requirement_a_rule_leaves_as_it_was_keeps_its_spelling_and_no_patch() -> None:
    release = flask("2.2.5", ["Werkzeug >= 2.2.2", "click>=8.0"])
    patched = apply_layers(release, [layer(rule(relax=["werkzeug"]))])
    assert patched.release == release
    assert patched.patches == ()


def test_a_replacement_with_its_own_marker_keeps_it() -> None:
    release = flask("2.2.5", ["Werkzeug>=2.2.2; python_version >= '3.7'"])
    patched = apply_layers(
        release, [layer(rule(replace=["werkzeug>=3; python_version >= '3.9'"]))]
    ).release
    assert patched.metadata is not None
    assert patched.metadata.requires_dist == ('werkzeug>=3; python_version >= "3.9"',)


def test_an_unparsable_requirement_is_left_alone() -> None:
    release = flask("2.2.5", ["not a requirement !!", "werkzeug<3"])
    patched = apply_layers(release, [layer(rule(relax=["werkzeug"]))]).release
    assert patched.metadata is not None
    assert patched.metadata.requires_dist == ("not a requirement !!", "werkzeug")


@pytest.mark.parametrize(
    ("files", "yanked"),
    [
        ("wheels", [True, True, False]),
        ("sdists", [False, False, True]),
        ("py2-none-any", [True, False, False]),
        ("py3-none-any", [False, True, False]),
        ("cp311-abi3-linux_x86_64", [False, False, False]),
    ],
)
def test_a_file_filter_selects_wheels_sdists_or_a_tag(files: str, yanked: list[bool]) -> None:
    release = flask("2.2.5", ["a"], ["b"])
    assert [f.filename for f in release.files] == [
        "Flask-2.2.5-py2-none-any.whl",
        "Flask-2.2.5-py3-none-any.whl",
        "flask-2.2.5.tar.gz",
    ]
    patched = apply_layers(release, [layer(rule(files=files, yank="x"))]).release
    assert [bool(f.yanked) for f in patched.files] == yanked


def test_a_wheel_with_several_tags_is_selected_by_any_of_them() -> None:
    release = Release.from_files("2.0", (make_file("demo-2.0-py2.py3-none-any.whl"),))
    for tag in ("py2-none-any", "py3-none-any"):
        patched = apply_layers(release, [layer(rule(files=tag, yank="x"))]).release
        assert patched.yanked == "x"


@pytest.mark.parametrize(
    ("upload_time", "selected"),
    [
        ("2024-01-02T03:04:04+00:00", True),
        ("2024-01-02T03:04:05+00:00", False),
        ("2024-01-02T03:04:06+00:00", False),
        (None, False),
        ("not a time", False),
    ],
)
def test_uploaded_before_is_a_strict_cutoff_and_an_unknown_time_is_not_before_it(
    upload_time: str | None, selected: bool
) -> None:
    dist_file = replace(make_file("demo-2.0-py3-none-any.whl"), upload_time=upload_time)
    cutoff = rule(yank="x", **{"uploaded-before": "2024-01-02T03:04:05+00:00"})
    assert selects_file(cutoff, dist_file) is selected


def test_a_file_without_metadata_can_still_be_yanked() -> None:
    release = Release.from_files(
        "2.0", (make_file("demo-2.0-py3-none-any.whl", metadata=False, requires_python=">=3"),)
    )
    patched = apply_layers(
        release, [layer(rule(relax=["x"], **{"requires-python": ">=3.9"}, yank="old"))]
    )
    (dist_file,) = patched.release.files
    assert (dist_file.metadata, dist_file.requires_python, dist_file.yanked) == (None, ">=3", "old")
    assert changes(patched) == [("yanked", None, False, "old")]


@pytest.mark.parametrize(
    ("specifier", "relaxed"),
    [("===2.1", "===2.1"), (">2", ">2"), ("==2.1.*,!=2.1.3", "!=2.1.3,>=2.1")],
)
def test_relaxing_keeps_lower_bounds_and_exclusions(specifier: str, relaxed: str) -> None:
    assert relax_specifier(SpecifierSet(specifier)) == SpecifierSet(relaxed)


def test_a_rule_that_does_not_yank_keeps_a_files_own_yank() -> None:
    release = Release.from_files(
        "2.0", (make_file("demo-2.0-py3-none-any.whl", requires_dist=["a<2"], yanked="old"),)
    )
    patched = apply_layers(release, [layer(rule(relax=["a"]))]).release
    assert patched.files[0].yanked == "old"


def test_the_last_of_three_understandings_wins_a_conflict() -> None:
    layers = [layer(rule(yank=name), name=name) for name in ("audit", "pallets", "local")]
    patched = apply_layers(flask(), layers)
    assert patched.release.yanked == "local"
    (conflict,) = patched.conflicts
    assert conflict.to_json()["winner"] == "local"
    assert conflict.understandings == ("audit", "pallets", "local")


def gate(*rules: Rule, name: str = "notary") -> Layer:
    return Layer(name, "d" * 40, f"{name}/fl/b8/flask.toml", RuleFile("Flask", rules), gate=True)


def test_a_gates_approval_records_which_rule_approved_what_and_why() -> None:
    approve = rule(id="reviewed", versions="==2.2.5", files="wheels", approve=True)
    patched = apply_layers(flask(), [gate(approve)])
    assert [a.to_json() for a in patched.approvals] == [
        {
            "filename": "Flask-2.2.5-py3-none-any.whl",
            "understanding": "notary",
            "commit": "d" * 40,
            "file": "notary/fl/b8/flask.toml",
            "rule": "reviewed",
            "reason": "because",
        }
    ]
    assert patched.hidden == (("flask-2.2.5.tar.gz", "not approved by the gate 'notary'"),)


def test_only_an_approve_rule_of_a_gate_approves() -> None:
    not_a_gate = layer(rule(approve=True), name="pallets")
    not_approving = gate(rule(yank="broken"))
    patched = apply_layers(flask(), [not_a_gate, not_approving])
    assert patched.approvals == ()
    assert [filename for filename, _ in patched.hidden] == [
        "Flask-2.2.5-py3-none-any.whl",
        "flask-2.2.5.tar.gz",
    ]
    assert patched.hidden_release == "not approved by the gate 'notary'"


def test_an_understanding_that_is_not_a_gate_does_not_stop_a_later_gate() -> None:
    patched = apply_layers(
        flask(), [layer(rule(yank="x")), gate(rule(files="sdists", approve=True))]
    )
    assert patched.hidden == (
        ("Flask-2.2.5-py3-none-any.whl", "not approved by the gate 'notary'"),
    )
    assert patched.hidden_release is None
