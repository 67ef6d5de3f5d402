"""Cooldown views: files younger than a duration before the data commit's time are hidden."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from metasrv.errors import InvalidInput
from metasrv.understandings.overrides import PatchedRelease, parse_upload_time

_DURATION = re.compile(r"([1-9][0-9]{0,3})([dh])")
MAX_COOLDOWN = timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class Cooldown:
    """How old a file must be, at the data commit's time, to be listed without a gate's approval."""

    text: str  # as spelled in the URL: "7d", "12h"
    duration: timedelta

    @classmethod
    def from_text(cls, text: str) -> Cooldown:
        """Parse ``<n>d`` or ``<n>h``."""
        match = _DURATION.fullmatch(text)
        if match is None:
            raise InvalidInput(
                f"invalid cooldown {text[:20]!r}: expected days or hours, such as 7d or 12h"
            )
        amount = int(match.group(1))
        duration = timedelta(days=amount) if match.group(2) == "d" else timedelta(hours=amount)
        if duration > MAX_COOLDOWN:
            raise InvalidInput(f"invalid cooldown {text!r}: at most {MAX_COOLDOWN.days}d")
        return cls(text, duration)


def apply_cooldown(
    patched: PatchedRelease, cooldown: Cooldown, data_time: datetime
) -> PatchedRelease:
    """Hide the files uploaded less than ``cooldown`` before ``data_time`` that no gate approved.

    Measured from the data commit's time, not the clock, so a pinned view never changes. A file
    without a known upload time is not known to be old enough, so it is hidden too.
    """
    approved = {approval.filename for approval in patched.approvals}
    hidden = dict(patched.hidden)
    cutoff = data_time - cooldown.duration
    when = data_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for dist_file in patched.original.files:
        if dist_file.filename in hidden or dist_file.filename in approved:
            continue
        uploaded = parse_upload_time(dist_file.upload_time)
        if uploaded is not None and uploaded.tzinfo is None:
            uploaded = uploaded.replace(tzinfo=UTC)
        if uploaded is None:
            hidden[dist_file.filename] = (
                f"no upload time, so not known to be {cooldown.text} old at the data commit"
            )
        elif uploaded > cutoff:
            hidden[dist_file.filename] = (
                f"uploaded {dist_file.upload_time}, less than {cooldown.text} before the data "
                f"commit ({when}), and no gate approved it"
            )
    files = patched.original.files
    return replace(
        patched,
        hidden=tuple((f.filename, hidden[f.filename]) for f in files if f.filename in hidden),
    )
