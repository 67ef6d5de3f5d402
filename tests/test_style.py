"""The package and tests stay ruff-clean, ruff-formatted and mypy --strict clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from tests.deadlines import SUBPROCESS_DEADLINE_SECONDS

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "metasrv", "tests", "benchmarks"],
        ["ruff", "format", "--check", "metasrv", "tests", "benchmarks"],
        ["mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_the_code_passes(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=SUBPROCESS_DEADLINE_SECONDS,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hypothesis_draws_the_same_examples_under_ci() -> None:
    assert settings.get_profile("ci").derandomize
    if os.environ.get("CI") == "true":
        assert settings().derandomize
