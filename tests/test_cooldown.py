"""Cooldown invariants: longer hides more, approvals always pass, gates are never undone."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet

from metasrv.model import Release
from metasrv.understandings.cooldown import Cooldown, apply_cooldown
from metasrv.understandings.overrides import Layer, apply_layers
from metasrv.understandings.rules import Rule, RuleFile
from tests.builders import make_file

COMMIT_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def release(ages_in_hours: list[int]) -> Release:
    """Return a release with one wheel per age, uploaded that many hours before COMMIT_TIME."""
    files = tuple(
        replace(
            make_file(f"p-1.0-py3-none-{index}.whl"),
            upload_time=(COMMIT_TIME - timedelta(hours=age)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        for index, age in enumerate(ages_in_hours)
    )
    return Release.from_files("1.0", files)


def gate(approved: set[int]) -> Layer:
    """Return a gate approving the wheels whose index is in ``approved``."""
    rules = tuple(
        Rule(
            id=f"r{index}",
            versions=SpecifierSet("==1.0"),
            reason="reviewed",
            files=f"py3-none-{index}",
            approve=True,
        )
        for index in sorted(approved)
    )
    return Layer("notary", "c" * 40, "p.toml", RuleFile("p", rules), gate=True)


ages = st.lists(st.integers(min_value=0, max_value=24 * 40), min_size=1, max_size=6)
hours = st.integers(min_value=1, max_value=24 * 30)


@given(ages, hours, hours)
def test_a_longer_cooldown_hides_at_least_what_a_shorter_one_hides(
    ages_in_hours: list[int], first: int, second: int
) -> None:
    shorter, longer = sorted((first, second))
    patched = apply_layers(release(ages_in_hours), [])
    hidden_short = apply_cooldown(patched, Cooldown.from_text(f"{shorter}h"), COMMIT_TIME).hidden
    hidden_long = apply_cooldown(patched, Cooldown.from_text(f"{longer}h"), COMMIT_TIME).hidden
    assert {name for name, _ in hidden_short} <= {name for name, _ in hidden_long}
    assert len(hidden_long) == sum(age < longer for age in ages_in_hours)


@given(ages, hours, st.sets(st.integers(min_value=0, max_value=5)))
def test_a_gate_decides_alone_what_a_cooldown_shows_in_its_view(
    ages_in_hours: list[int], cooldown: int, approved: set[int]
) -> None:
    patched = apply_layers(release(ages_in_hours), [gate(approved)])
    cooled = apply_cooldown(patched, Cooldown.from_text(f"{cooldown}h"), COMMIT_TIME)
    shown = {f.filename for f in cooled.original.files if f.filename not in cooled.hidden_reasons}
    assert shown == {
        f"p-1.0-py3-none-{index}.whl" for index in approved if index < len(ages_in_hours)
    }
    assert dict(patched.hidden).items() <= dict(cooled.hidden).items()  # never undone
