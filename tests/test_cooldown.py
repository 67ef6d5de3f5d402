"""Cooldown durations as a URL spells them: days or hours, within ten years."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from metasrv.errors import InvalidInput
from metasrv.model import Release
from metasrv.understandings.cooldown import Cooldown, apply_cooldown
from metasrv.understandings.overrides import Layer, apply_layers
from metasrv.understandings.rules import Rule, RuleFile
from tests.builders import make_file


@pytest.mark.parametrize(
    ("text", "duration"),
    [
        ("1h", timedelta(hours=1)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("9999h", timedelta(hours=9999)),
        ("3650d", timedelta(days=3650)),
    ],
)
def test_a_cooldown_is_days_or_hours(text: str, duration: timedelta) -> None:
    assert Cooldown.from_text(text) == Cooldown(text, duration)


@pytest.mark.parametrize(
    "text", ["", "0d", "07d", "7", "d", "7m", "7D", "7w", "1.5d", "-1d", "10000h", " 7d", "7d "]
)
def test_anything_else_is_not_a_cooldown(text: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        Cooldown.from_text(text)
    assert raised.value.message == (
        f"invalid cooldown {text[:20]!r}: expected days or hours, such as 7d or 12h"
    )


def test_a_cooldown_longer_than_ten_years_is_refused() -> None:
    with pytest.raises(InvalidInput) as raised:
        Cooldown.from_text("3651d")
    assert raised.value.message == "invalid cooldown '3651d': at most 3650d"


def test_a_long_bad_cooldown_is_echoed_back_cut_short() -> None:
    with pytest.raises(InvalidInput) as raised:
        Cooldown.from_text("9" * 100)
    assert repr("9" * 20) in raised.value.message
    assert "9" * 21 not in raised.value.message


def release_uploaded_at(*times: str | None) -> Release:
    files = tuple(
        replace(make_file(f"demo-1.0-py3{index}-none-any.whl"), upload_time=upload_time)
        for index, upload_time in enumerate(times)
    )
    return Release.from_files("1.0", files)


# 2024-01-10 12:00 UTC, spelled in another zone: the reason names it in UTC.
DATA_TIME = datetime(2024, 1, 10, 13, 0, tzinfo=timezone(timedelta(hours=1)))


def test_files_younger_than_the_cooldown_at_the_data_commit_are_hidden_and_why() -> None:
    release = release_uploaded_at(
        "2024-01-03T11:59:59+00:00",  # older than 7 days
        "2024-01-03T12:00:00+00:00",  # exactly 7 days: old enough
        "2024-01-03T12:00:01+00:00",  # younger
        "2024-01-03T12:30:00",  # no zone: read as UTC, younger
        "2024-01-03T11:30:00",  # no zone: read as UTC, older
        None,
        "not a time",
    )
    cooled = apply_cooldown(apply_layers(release, []), Cooldown.from_text("7d"), DATA_TIME)
    young = (
        "uploaded {}, less than 7d before the data commit (2024-01-10T12:00:00Z), "
        "and no gate approved it"
    )
    unknown = "no upload time, so not known to be 7d old at the data commit"
    assert cooled.hidden == (
        ("demo-1.0-py32-none-any.whl", young.format("2024-01-03T12:00:01+00:00")),
        ("demo-1.0-py33-none-any.whl", young.format("2024-01-03T12:30:00")),
        ("demo-1.0-py35-none-any.whl", unknown),
        ("demo-1.0-py36-none-any.whl", unknown),
    )


def test_a_file_a_gate_approved_or_already_hid_keeps_its_standing() -> None:
    release = release_uploaded_at(None, None, None)
    gate = Layer(
        "notary",
        "d" * 40,
        "p",
        RuleFile("Demo", (Rule.from_toml(APPROVE_SECOND, "x"),)),
        gate=True,
    )
    cooled = apply_cooldown(apply_layers(release, [gate]), Cooldown.from_text("1h"), DATA_TIME)
    assert cooled.hidden == (
        ("demo-1.0-py30-none-any.whl", "not approved by the gate 'notary'"),
        ("demo-1.0-py32-none-any.whl", "not approved by the gate 'notary'"),
    )


APPROVE_SECOND = {
    "id": "ok",
    "versions": "==1.0",
    "files": "py31-none-any",
    "approve": True,
    "reason": "read",
}
