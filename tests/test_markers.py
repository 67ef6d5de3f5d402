"""Known marker sets: generated from facts, served, and evaluated exactly as packaging does."""

from __future__ import annotations

import re
import time
from datetime import date
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.markers import Marker

from metasrv.cli.main import main
from metasrv.errors import InvalidData, InvalidInput
from metasrv.markers import (
    MARKER_VARIABLES,
    MarkerSet,
    PythonRelease,
    generate_environments,
    load_platforms,
    load_pythons,
    matches,
    months_before,
    supported_in_window,
)
from metasrv.repo import tomlcodec
from metasrv.repo.storage import Storage
from tests.builders import add_marker_sets
from tests.conftest import AsgiClient
from tests.test_understandings import add_rules, register

ROOT = Path(__file__).resolve().parents[1]
FACTS = ROOT / "markers" / "facts"
PYTHONS = load_pythons(tomlcodec.loads((FACTS / "pythons.toml").read_bytes(), where="p"))
PLATFORMS = load_platforms(tomlcodec.loads((FACTS / "platforms.toml").read_bytes(), where="p"))
AS_OF = date(2026, 11, 25)


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2026, 11, 25), 36, date(2023, 11, 25)),
        (date(2024, 5, 31), 3, date(2024, 2, 29)),
        (date(2023, 3, 31), 1, date(2023, 2, 28)),
        (date(2026, 1, 15), 13, date(2024, 12, 15)),
        (date(2026, 1, 15), 0, date(2026, 1, 15)),
    ],
)
def test_months_are_counted_back_clamping_to_the_months_end(
    day: date, months: int, expected: date
) -> None:
    assert months_before(day, months) == expected


def _release(released: date, end_of_life: date | None) -> PythonRelease:
    return PythonRelease("cpython", "3.99", released, end_of_life, "3.99.1", "3.99.1")


@pytest.mark.parametrize(
    ("released", "end_of_life", "included"),
    [
        (date(2020, 1, 1), date(2023, 11, 25), True),  # end of life exactly 36 months ago
        (date(2020, 1, 1), date(2023, 11, 24), False),  # a day earlier
        (date(2026, 11, 25), None, True),  # released on the as-of date
        (date(2026, 12, 25), None, False),  # released next month
        (date(2020, 1, 1), None, True),  # no end of life set yet
    ],
)
def test_the_window_includes_both_of_its_ends(
    released: date, end_of_life: date | None, included: bool
) -> None:
    assert supported_in_window(_release(released, end_of_life), AS_OF, 36) is included


def test_linux_macos_windows_36m_holds_every_platform_and_supported_cpython() -> None:
    environments = generate_environments(
        PYTHONS,
        PLATFORMS,
        families=["linux", "macos", "windows"],
        months=36,
        as_of=AS_OF,
        implementations=["cpython"],
    )
    ids = {e["id"] for e in environments}
    versions = sorted(
        {e["python_version"] for e in environments}, key=lambda v: tuple(map(int, v.split(".")))
    )
    assert versions == ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15"]
    assert "cpython3.8-linux-x86_64" in ids
    assert "cpython3.7-linux-x86_64" not in ids
    assert "cpython3.10-windows-arm64" not in ids  # no official builds before 3.11
    assert "cpython3.11-windows-arm64" in ids
    assert "cpython3.8-macos-arm64" not in ids
    assert len(ids) == len(environments)
    windows = next(e for e in environments if e["id"] == "cpython3.12-windows-amd64")
    assert windows == {
        "id": "cpython3.12-windows-amd64",
        "implementation_name": "cpython",
        "implementation_version": "3.12.14",
        "os_name": "nt",
        "platform_machine": "AMD64",
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Windows",
        "platform_version": "",
        "python_full_version": "3.12.14",
        "python_version": "3.12",
        "sys_platform": "win32",
    }


@pytest.fixture
def meta(storage: Storage) -> Storage:
    """Give the test meta repository the real facts and two generated sets."""
    add_marker_sets(storage, {"lmw": "linux,macos,windows", "lin": "linux"})
    return storage


MARKER_ATOMS = [
    'sys_platform == "win32"',
    'sys_platform != "darwin"',
    'platform_machine == "arm64"',
    'python_version >= "3.10"',
    'python_version < "3.9"',
    'python_full_version >= "3.12.14"',
    'implementation_name == "pypy"',
    'os_name == "nt"',
    "'linux' in sys_platform",
    'platform_system == "Darwin"',
    'extra == "test"',
]
markers = st.recursive(
    st.sampled_from(MARKER_ATOMS),
    lambda inner: st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})"
    ),
    max_leaves=4,
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(marker=markers)
def test_evaluation_agrees_with_packaging(client: AsgiClient, meta: Storage, marker: str) -> None:
    document = client.get("/v1/markers/lmw").json()
    expected = [
        e["id"]
        for e in document["environments"]
        if Marker(marker).evaluate({k: v for k, v in e.items() if k != "id"} | {"extra": ""})
    ]
    answer = client.get(f"/v1/markers/lmw/evaluate?marker={quote(marker)}").json()
    assert answer["environments"] == expected


def test_the_api_lists_sets_and_serves_them_at_any_commit(
    client: AsgiClient, meta: Storage
) -> None:
    listing = client.get("/v1/markers").json()["marker-sets"]
    assert [s["name"] for s in listing] == ["lin", "lmw"]
    assert listing[0]["environments"] < listing[1]["environments"]
    one = client.get("/v1/markers/lin").json()
    assert one["generator"] == {
        "platforms": ["linux"],
        "months": 36,
        "implementations": ["cpython"],
        "as-of": "2026-11-25",
    }
    assert client.get("/v1/markers/lin?at=HEAD~1").status_code == 400


def test_a_requirement_is_evaluated_with_the_extras_its_marker_names(
    client: AsgiClient, meta: Storage
) -> None:
    requirement = quote('pywin32 ; sys_platform == "win32" and extra == "win"')
    answer = client.get(f"/v1/markers/lmw/evaluate?requirement={requirement}").json()
    assert answer["environments"] == []
    assert answer["extras"]["win"]
    assert all(
        i.endswith(("windows-amd64", "windows-arm64", "windows-x86"))
        for i in answer["extras"]["win"]
    )


def test_the_largest_accepted_requirement_is_answered(client: AsgiClient, meta: Storage) -> None:
    clauses = [f'extra == "e{i}"' for i in range(16)] + ['os_name == "nt"'] * 48
    requirement = quote("x ; " + " or ".join(clauses))
    started = time.monotonic()
    answer = client.get(f"/v1/markers/lmw/evaluate?requirement={requirement}")
    assert answer.status_code == 200
    assert sorted(answer.json()["extras"]) == sorted(f"e{i}" for i in range(16))
    # Not a benchmark: a generous bound only so that a quadratic regression fails loudly.
    assert time.monotonic() - started < 30


def test_a_version_literal_past_the_int_limit_is_bad_input_not_a_crash() -> None:
    marker = Marker(f'python_version == "{"1" * 4301}"')
    with pytest.raises(InvalidInput, match="cannot be evaluated"):
        matches(marker, dict.fromkeys(MARKER_VARIABLES, "3.12"))


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/v1/markers/lmw/evaluate?marker=python_version%20%3E%3D", 400, "invalid marker"),
        ("/v1/markers/lmw/evaluate?marker=os_name%3D%3D'nt'&requirement=x", 400, "exactly one"),
        ("/v1/markers/lmw/evaluate", 400, "exactly one"),
        ("/v1/markers/lmw/evaluate?requirement=x%3E%3E1", 400, "invalid requirement"),
        ("/v1/markers/nope", 404, "unknown marker set 'nope'"),
        (
            "/v1/markers/lmw/evaluate?marker=" + quote(f'python_version == "{"1" * 4301}"'),
            400,
            "longer than 2048",
        ),
        (
            "/v1/markers/lmw/evaluate?requirement="
            # 4,000 clauses in the fewest bytes a URL allows (httpx caps URLs at 64 KiB).
            + quote("x;" + " or ".join(["extra=='a'"] * 4000).replace("' or ", "'or "), safe="'=;"),
            400,
            "longer than 2048",
        ),
        (
            "/v1/markers/lmw/evaluate?marker=" + quote(" or ".join(['os_name == "a"'] * 65)),
            400,
            "65 comparisons",
        ),
        (
            "/v1/markers/lmw/evaluate?marker=" + quote("(" * 17 + 'os_name == "a"' + ")" * 17),
            400,
            "nests parentheses",
        ),
        (
            "/v1/markers/lmw/evaluate?requirement="
            + quote("x ; " + " or ".join(f'extra == "e{i}"' for i in range(17))),
            400,
            "17 extras",
        ),
        ("/v1/markers/Bad%20Name", 400, "invalid marker set name"),
    ],
)
def test_bad_marker_requests_are_4xx(
    client: AsgiClient, meta: Storage, url: str, status: int, message: str
) -> None:
    response = client.get(url)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_a_release_is_annotated_per_requirement_and_extra(
    client: AsgiClient, meta: Storage
) -> None:
    register(meta, "pallets", ".", "understandings/pallets")
    add_rules(
        meta,
        "understandings/pallets",
        "Flask",
        {"id": "win", "versions": "==2.0.0", "add": ['colorama ; os_name == "nt"'], "reason": "r"},
    )
    plain = client.get("/v1/projects/flask/2.0.0?markers=lin").json()
    (werkzeug,) = plain["markers"]["requirements"]
    assert werkzeug["requirement"] == "Werkzeug>=2.0"
    assert len(werkzeug["environments"]) == len(
        client.get("/v1/markers/lin").json()["environments"]
    )
    patched = client.get("/v1/projects/flask/2.0.0?markers=lmw&understanding=pallets").json()
    colorama = patched["markers"]["requirements"][1]
    assert colorama["requirement"] == 'colorama; os_name == "nt"'
    assert colorama["environments"]
    assert all("-windows-" in i for i in colorama["environments"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--platforms", "beos", "--months", "36"], "unknown platform 'beos'"),
        (["--platforms", "linux", "--months", "36", "--as-of", "yesterday"], "not an ISO date"),
        (["--platforms", "linux", "--months", "-1"], "must not be negative"),
    ],
)
def test_bad_generate_arguments_exit_2(
    meta: Storage, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["markers", "generate", "x", "--repo", str(meta.path), *args]) == 2
    assert message in capsys.readouterr().err


def test_the_readme_example_is_a_valid_set() -> None:
    (example,) = re.findall(
        r"```toml\n(.*?)```", (ROOT / "markers" / "README.md").read_text(), re.DOTALL
    )
    parsed = MarkerSet.from_toml(tomlcodec.loads(example, where="README"), "README")
    assert tomlcodec.dumps(parsed.to_toml()).decode() == example


@pytest.mark.parametrize(
    "value",
    [1.5, date(2026, 11, 25), 2**63, [1], {"nested": "table"}],
    ids=["float", "date", "2**63", "array of integers", "table"],
)
def test_a_generator_value_json_cannot_carry_as_it_is_is_invalid(value: object) -> None:
    # Its answer is JSON: a float or a date has no one spelling there, and 2**63 no 64 bits.
    (example,) = re.findall(
        r"```toml\n(.*?)```", (ROOT / "markers" / "README.md").read_text(), re.DOTALL
    )
    document = tomlcodec.loads(example, where="README")
    document["generator"]["months"] = value
    with pytest.raises(InvalidData, match="README: generator 'months' must be a string, a bool"):
        MarkerSet.from_toml(document, "README")
    document["generator"]["months"] = -(2**63)  # a 64-bit integer, and the others as they are
    assert MarkerSet.from_toml(document, "README").generator["months"] == -(2**63)


BUNDLED = sorted((ROOT / "markers" / "sets").glob("*.toml"))


def test_the_bundled_sets_are_there() -> None:
    assert {p.stem for p in BUNDLED} >= {"linux_macos_windows-36m", "linux-36m", "all-supported"}


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_each_bundled_set_is_what_its_generator_makes_from_the_facts(path: Path) -> None:
    marker_set = MarkerSet.from_toml(tomlcodec.loads(path.read_bytes(), where=path.name), path.name)
    generator = marker_set.generator
    months = int(generator["months"])
    environments = generate_environments(
        PYTHONS,
        PLATFORMS,
        families=list(generator["platforms"]),
        months=months,
        as_of=date.fromisoformat(generator["as-of"]),
        implementations=list(generator["implementations"]),
    )
    assert list(marker_set.environments) == environments
    assert tomlcodec.dumps(marker_set.to_toml()) == path.read_bytes()
