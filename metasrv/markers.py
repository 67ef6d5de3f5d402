"""Known marker sets: full PEP 508 environments, generated from facts and evaluated by packaging."""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any

from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement

from metasrv.errors import InvalidData, InvalidInput, NotFound
from metasrv.names import validate_label
from metasrv.repo import tomlcodec
from metasrv.repo.storage import BlobId, CommitId, Storage
from metasrv.tables import FORMAT_VERSION, TableReader, fits_64_bits

MARKERS_ROOT = "markers"
FACTS_PYTHONS = f"{MARKERS_ROOT}/facts/pythons.toml"
FACTS_PLATFORMS = f"{MARKERS_ROOT}/facts/platforms.toml"
SETS_FOLDER = f"{MARKERS_ROOT}/sets"
# What a client may ask to evaluate: real requirements are far smaller, and these bounds keep
# the work linear in the input (evaluations = environments x (1 + extras) x clauses).
MAX_CLIENT_MARKER_LENGTH = 2048
MAX_CLIENT_MARKER_CLAUSES = 64
MAX_CLIENT_MARKER_DEPTH = 16  # packaging parses parentheses recursively
MAX_CLIENT_MARKER_EXTRAS = 16
_OPERATOR = re.compile(r"===|==|!=|<=|>=|~=|<|>|\bnot\s+in\b|\bin\b")
# Every PEP 508 environment marker; a set's environments give each one a value.
MARKER_VARIABLES = (
    "implementation_name",
    "implementation_version",
    "os_name",
    "platform_machine",
    "platform_python_implementation",
    "platform_release",
    "platform_system",
    "platform_version",
    "python_full_version",
    "python_version",
    "sys_platform",
)


@dataclass(frozen=True, slots=True)
class PythonRelease:
    """A feature release of a Python implementation and its support period."""

    implementation: str  # "cpython" or "pypy"
    python_version: str  # "3.12"
    released: date
    end_of_life: date | None
    latest: str  # the newest patch release: "3.12.14"; for PyPy its own version
    python_full_version: str  # the language version it implements


@dataclass(frozen=True, slots=True)
class Platform:
    """An OS and machine as PEP 508 markers see them."""

    id: str
    family: str  # "linux", "macos" or "windows": what --platforms selects
    os_name: str
    sys_platform: str
    platform_system: str
    platform_machine: str
    implementations: tuple[str, ...]
    min_python: str | None
    libc: str | None = None


def parse_date(text: Any, where: str) -> date:
    """Parse an ISO date (TOML dates arrive as ``date``)."""
    if isinstance(text, date):
        return text
    try:
        return date.fromisoformat(str(text))
    except ValueError:
        raise InvalidInput(f"{where}: {text!r} is not an ISO date (YYYY-MM-DD)") from None


def load_pythons(document: Mapping[str, Any]) -> list[PythonRelease]:
    """Read ``markers/facts/pythons.toml``."""
    reader = TableReader(document, FACTS_PYTHONS)
    reader.require_format()
    releases = []
    for index, table in enumerate(reader.tables("releases")):
        where = f"{FACTS_PYTHONS}: releases[{index}]"
        row = TableReader(table, where)
        eol = row.value("end-of-life")
        releases.append(
            PythonRelease(
                implementation=row.string("implementation"),
                python_version=row.string("python-version"),
                released=parse_date(row.value("released"), where),
                end_of_life=parse_date(eol, where) if eol is not None else None,
                latest=row.string("latest"),
                python_full_version=row.string("python-full-version"),
            )
        )
        row.reject_unknown()
    return releases


def load_platforms(document: Mapping[str, Any]) -> list[Platform]:
    """Read ``markers/facts/platforms.toml``."""
    reader = TableReader(document, FACTS_PLATFORMS)
    reader.require_format()
    platforms = []
    for index, table in enumerate(reader.tables("platforms")):
        row = TableReader(table, f"{FACTS_PLATFORMS}: platforms[{index}]")
        platforms.append(
            Platform(
                id=row.string("id"),
                family=row.string("family"),
                os_name=row.string("os_name"),
                sys_platform=row.string("sys_platform"),
                platform_system=row.string("platform_system"),
                platform_machine=row.string("platform_machine"),
                implementations=row.strings("implementations") or ("cpython",),
                min_python=row.optional_string("min-python"),
                libc=row.optional_string("libc"),
            )
        )
        row.reject_unknown()
    return platforms


def months_before(day: date, months: int) -> date:
    """Return the same day ``months`` earlier, clamped to the month's end (2024-05-31 -> 02-29)."""
    month_index = day.year * 12 + day.month - 1 - months
    year, month = divmod(month_index, 12)
    last_day = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last_day))


def supported_in_window(release: PythonRelease, as_of: date, months: int) -> bool:
    """Return whether a release was supported at any time in the ``months`` up to ``as_of``."""
    start = months_before(as_of, months)
    released_in_time = release.released <= as_of
    alive = release.end_of_life is None or release.end_of_life >= start
    return released_in_time and alive


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def generate_environments(
    pythons: Sequence[PythonRelease],
    platforms: Sequence[Platform],
    *,
    families: Sequence[str],
    months: int,
    as_of: date,
    implementations: Sequence[str],
) -> list[dict[str, str]]:
    """Return every environment of the chosen platforms and the Pythons of the window."""
    unknown = sorted(set(families) - {p.family for p in platforms})
    if unknown:
        raise InvalidInput(f"unknown platform {unknown[0]!r}; known: linux, macos, windows")
    environments: dict[str, dict[str, str]] = {}
    for platform in (p for p in platforms if p.family in families):
        for release in pythons:
            if release.implementation not in implementations:
                continue
            if release.implementation not in platform.implementations:
                continue
            if platform.min_python and _version_tuple(release.python_version) < _version_tuple(
                platform.min_python
            ):
                continue
            if not supported_in_window(release, as_of, months):
                continue
            environment = _environment(release, platform)
            environments.setdefault(environment["id"], environment)
    return sorted(environments.values(), key=lambda e: e["id"])


def _environment(release: PythonRelease, platform: Platform) -> dict[str, str]:
    is_pypy = release.implementation == "pypy"
    return {
        "id": f"{release.implementation}{release.python_version}-{platform.id}",
        "implementation_name": release.implementation,
        "implementation_version": release.latest if is_pypy else release.python_full_version,
        "os_name": platform.os_name,
        "platform_machine": platform.platform_machine,
        "platform_python_implementation": "PyPy" if is_pypy else "CPython",
        # Kernel and OS build strings vary machine to machine; the sets leave them unknown.
        "platform_release": "",
        "platform_system": platform.platform_system,
        "platform_version": "",
        "python_full_version": release.python_full_version,
        "python_version": release.python_version,
        "sys_platform": platform.sys_platform,
    }


def parse_marker(text: str) -> Marker:
    """Parse a PEP 508 marker, or raise InvalidInput carrying packaging's message."""
    try:
        return Marker(text)
    except InvalidMarker as exc:
        raise InvalidInput(f"invalid marker {text!r}: {str(exc).splitlines()[0]}") from None


def parse_requirement(text: str) -> Requirement:
    """Parse a PEP 508 requirement, or raise InvalidInput carrying packaging's message."""
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise InvalidInput(f"invalid requirement {text!r}: {str(exc).splitlines()[0]}") from None


def check_client_marker(text: str, what: str) -> str:
    """Return a client's marker or requirement text if it is small enough to evaluate."""
    if len(text) > MAX_CLIENT_MARKER_LENGTH:
        raise InvalidInput(f"{what} is longer than {MAX_CLIENT_MARKER_LENGTH} characters")
    clauses = len(_OPERATOR.findall(text))
    if clauses > MAX_CLIENT_MARKER_CLAUSES:
        raise InvalidInput(f"{what} has {clauses} comparisons; at most {MAX_CLIENT_MARKER_CLAUSES}")
    depth = deepest = 0
    for character in text:
        depth += {"(": 1, ")": -1}.get(character, 0)
        deepest = max(deepest, depth)
    if deepest > MAX_CLIENT_MARKER_DEPTH:
        raise InvalidInput(f"{what} nests parentheses deeper than {MAX_CLIENT_MARKER_DEPTH}")
    return text


def named_extras(requirement: Requirement) -> list[str]:
    """Return the distinct extras a requirement's marker compares against, at most a bound."""
    named = list(dict.fromkeys(re.findall(r'extra == "([^"]+)"', str(requirement.marker))))
    if len(named) > MAX_CLIENT_MARKER_EXTRAS:
        raise InvalidInput(
            f"the marker names {len(named)} extras; at most {MAX_CLIENT_MARKER_EXTRAS}"
        )
    return named


def matches(marker: Marker, environment: Mapping[str, str], extra: str = "") -> bool:
    """Return whether ``marker`` holds in an environment (with ``extra`` requested)."""
    values = {key: environment[key] for key in MARKER_VARIABLES}
    try:
        return bool(marker.evaluate({**values, "extra": extra}))
    except (UndefinedComparison, UndefinedEnvironmentName) as exc:
        raise InvalidInput(f"marker {str(marker)[:200]!r} cannot be evaluated: {exc}") from None
    except ValueError as exc:
        # A version literal past Python's int digit limit (4,300) fails inside packaging.
        raise InvalidInput(f"marker {str(marker)[:200]!r} cannot be evaluated: {exc}") from None


def evaluate(
    marker: Marker | None, environments: Sequence[Mapping[str, str]], extra: str = ""
) -> list[str]:
    """Return the ids of the environments a marker (None: always) applies to."""
    return [e["id"] for e in environments if marker is None or matches(marker, e, extra)]


def annotate_requirements(
    requirements: Sequence[str],
    provides_extra: Sequence[str],
    environments: Sequence[Mapping[str, str]],
) -> list[dict[str, Any]]:
    """Annotate each requirement with the environments it applies to, plainly and per extra."""
    annotated = []
    for text in requirements:
        requirement = parse_requirement(text)
        plain = evaluate(requirement.marker, environments)
        per_extra = {
            extra: ids
            for extra in provides_extra
            if (ids := evaluate(requirement.marker, environments, extra)) != plain
        }
        annotated.append({"requirement": text, "environments": plain, "extras": per_extra})
    return annotated


@dataclass(frozen=True, slots=True)
class MarkerSet:
    """A named set of environments, with how it was made."""

    name: str
    description: str
    generator: Mapping[str, Any]
    environments: tuple[Mapping[str, str], ...]

    @classmethod
    def from_toml(cls, document: Mapping[str, Any], where: str) -> MarkerSet:
        """Build from a parsed set file; every environment must give every marker a value."""
        reader = TableReader(document, where)
        reader.require_format()
        environments = []
        for index, table in enumerate(reader.tables("environments")):
            missing = [
                key for key in ("id", *MARKER_VARIABLES) if not isinstance(table.get(key), str)
            ]
            if missing:
                raise InvalidData(f"{where}: environments[{index}] lacks {missing[0]!r}")
            environments.append({key: str(table[key]) for key in ("id", *MARKER_VARIABLES)})
        marker_set = cls(
            name=reader.string("name"),
            description=reader.string("description"),
            generator=_generator(reader.optional_table("generator") or {}, where),
            environments=tuple(environments),
        )
        reader.reject_unknown()
        return marker_set

    def to_toml(self) -> dict[str, Any]:
        """Return the canonical document."""
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "generator": dict(self.generator),
            "environments": [dict(e) for e in self.environments],
        }


class MarkerSets:
    """The marker sets and facts of a meta repository, read at whichever commit is pinned."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._parse = lru_cache(maxsize=64)(self._parse_blob)

    def names(self, commit_id: CommitId) -> list[str]:
        """Return the names of every set at a commit."""
        tree_id = self.storage.tree_id(commit_id, SETS_FOLDER)
        if tree_id is None:
            return []
        return sorted(
            path.removesuffix(".toml")
            for path, _ in self.storage.walk_blobs(tree_id)
            if "/" not in path and path.endswith(".toml")
        )

    def get(self, commit_id: CommitId, name: str) -> MarkerSet:
        """Return one set, or NotFound."""
        path = f"{SETS_FOLDER}/{validate_label(name, 'marker set name')}.toml"
        blob_id = self.storage.blob_id(commit_id, path)
        if blob_id is None:
            raise NotFound(f"unknown marker set {name!r}")
        return self._parse(blob_id, path)

    def _parse_blob(self, blob_id: BlobId, path: str) -> MarkerSet:
        marker_set = MarkerSet.from_toml(
            tomlcodec.loads(self.storage.read_blob(blob_id), where=path), path
        )
        if f"{SETS_FOLDER}/{marker_set.name}.toml" != path:
            raise InvalidData(f"{path}: names the set {marker_set.name!r}")
        return marker_set

    def facts(self, commit_id: CommitId) -> tuple[list[PythonRelease], list[Platform]]:
        """Return the Python releases and platforms sets are generated from."""
        documents = []
        for path in (FACTS_PYTHONS, FACTS_PLATFORMS):
            content = self.storage.read(commit_id, path)
            if content is None:
                raise NotFound(f"the meta repository has no {path}")
            documents.append(tomlcodec.loads(content, where=path))
        return load_pythons(documents[0]), load_platforms(documents[1])


def _generator(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Return a ``generator`` table whose values JSON carries as they are."""
    # TOML's floats, dates and unbounded integers have no one JSON spelling: a set's answer
    # would change bytes with the encoder, or fail.
    for key, value in table.items():
        plain = isinstance(value, str | bool) or (isinstance(value, int) and fits_64_bits(value))
        strings = isinstance(value, list) and all(isinstance(item, str) for item in value)
        if not (plain or strings):
            raise InvalidData(
                f"{where}: generator {key!r} must be a string, a boolean, an integer or an "
                "array of strings"
            )
    return dict(table)
