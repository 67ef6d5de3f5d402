"""Understandings' rule files and registrations: their TOML form, parsed and checked at the edge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name

from metasrv.errors import InvalidData, InvalidInput
from metasrv.names import normalize_name, project_path, validate_label
from metasrv.tables import FORMAT_VERSION, TableReader

FILE_FILTERS = ("wheels", "sdists")
ACTIONS = ("relax", "replace", "remove", "add", "requires-python", "yank", "approve")


@dataclass(frozen=True, slots=True)
class Rule:
    """One override: which releases (and files) it selects, what it changes, and why."""

    id: str
    versions: SpecifierSet
    reason: str
    uploaded_before: datetime | None = None
    files: str | None = None  # "wheels", "sdists", or a wheel tag such as "py3-none-any"
    open_ended: bool = False
    relax: tuple[NormalizedName, ...] = ()
    replace: tuple[Requirement, ...] = ()
    remove: tuple[NormalizedName, ...] = ()
    add: tuple[Requirement, ...] = ()
    requires_python: SpecifierSet | None = None
    yank: str | None = None
    approve: bool = False  # in a gate: the selected files are listed through it
    # How the file spelled its specifiers and requirements, written back as they were.
    spelled: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_bounded(self) -> bool:
        """Return whether the selection cannot grow to future releases."""
        upper = any(spec.operator in ("<", "<=", "==", "===", "~=") for spec in self.versions)
        return upper or self.uploaded_before is not None

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], where: str) -> Rule:
        """Build from one ``[[rules]]`` table, naming ``where`` in errors."""
        reader = TableReader(table, where)
        rule_id = reader.string("id")
        where = f"{where} (rule {rule_id!r})"
        try:
            versions = SpecifierSet(reader.string("versions"))
            requires_python_text = reader.optional_string("requires-python")
            requires_python = (
                SpecifierSet(requires_python_text) if requires_python_text is not None else None
            )
        except InvalidSpecifier as exc:
            raise InvalidData(f"{where}: {exc}") from None
        replace = tuple(_requirement(text, where) for text in reader.strings("replace"))
        add = tuple(_requirement(text, where) for text in reader.strings("add"))
        uploaded_text = reader.optional_string("uploaded-before")
        try:
            uploaded_before = (
                datetime.fromisoformat(uploaded_text) if uploaded_text is not None else None
            )
        except ValueError:
            raise InvalidData(f"{where}: 'uploaded-before' is not an ISO 8601 time") from None
        rule = cls(
            id=rule_id,
            versions=versions,
            reason=reader.string("reason"),
            uploaded_before=uploaded_before,
            files=reader.optional_string("files"),
            open_ended=reader.boolean("open-ended", default=False),
            relax=tuple(_dependency(name, where) for name in reader.strings("relax")),
            replace=replace,
            remove=tuple(_dependency(name, where) for name in reader.strings("remove")),
            add=add,
            requires_python=requires_python,
            yank=reader.optional_string("yank"),
            approve=reader.boolean("approve", default=False),
            spelled={
                k: table[k] for k in ("versions", "replace", "add", "requires-python") if k in table
            },
        )
        reader.reject_unknown()
        if not any(table.get(action) for action in ACTIONS):
            raise InvalidData(f"{where}: changes nothing; give one of {', '.join(ACTIONS)}")
        if rule.files is not None and rule.files not in FILE_FILTERS and rule.files.count("-") != 2:
            raise InvalidData(f"{where}: 'files' must be wheels, sdists or a wheel tag")
        return rule

    def to_toml(self) -> dict[str, Any]:
        """Return the canonical ``[[rules]]`` table."""
        table: dict[str, Any] = {
            "id": self.id,
            "versions": self._spelled("versions", self.versions),
        }
        if self.uploaded_before is not None:
            table["uploaded-before"] = self.uploaded_before.isoformat()
        if self.files is not None:
            table["files"] = self.files
        if self.open_ended:
            table["open-ended"] = True
        for key, values in (
            ("relax", self.relax),
            ("replace", self._spelled("replace", [str(r) for r in self.replace])),
            ("remove", self.remove),
            ("add", self._spelled("add", [str(r) for r in self.add])),
        ):
            if values:
                table[key] = list(values)
        if self.requires_python is not None:
            table["requires-python"] = self._spelled("requires-python", self.requires_python)
        if self.yank is not None:
            table["yank"] = self.yank
        if self.approve:
            table["approve"] = True
        table["reason"] = self.reason
        return table

    def _spelled(self, key: str, value: Any) -> Any:
        spelled = self.spelled.get(key)
        return (
            spelled if spelled is not None else (value if isinstance(value, list) else str(value))
        )


def _requirement(text: str, where: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise InvalidData(f"{where}: invalid requirement {text!r}: {reason}") from None


def _dependency(name: str, where: str) -> NormalizedName:
    try:
        return normalize_name(name)
    except InvalidInput as exc:
        raise InvalidData(f"{where}: {exc.message}") from None


@dataclass(frozen=True, slots=True)
class RuleFile:
    """The rules of one understanding for one project, in the order they apply."""

    project: str
    rules: tuple[Rule, ...] = ()

    @property
    def normalized_name(self) -> NormalizedName:
        """Return the project's normalized name."""
        return canonicalize_name(self.project)

    @classmethod
    def from_toml(cls, document: Mapping[str, Any], where: str) -> RuleFile:
        """Build from a parsed rule file; rule ids must be unique within it."""
        reader = TableReader(document, where)
        reader.require_format()
        project = reader.string("project")
        rules = tuple(
            Rule.from_toml(table, f"{where}: rules[{index}]")
            for index, table in enumerate(reader.tables("rules"))
        )
        reader.reject_unknown()
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise InvalidData(f"{where}: two rules have the id {rule.id!r}")
            seen.add(rule.id)
        return cls(project=project, rules=rules)

    def to_toml(self) -> dict[str, Any]:
        """Return the canonical document."""
        return {
            "format": FORMAT_VERSION,
            "project": self.project,
            "rules": [rule.to_toml() for rule in self.rules],
        }


def rule_path(folder: str, normalized_name: NormalizedName) -> str:
    """Return the path of a project's rule file in an understanding's folder."""
    return f"{folder.strip('/')}/{project_path(normalized_name)}".lstrip("/")


@dataclass(frozen=True, slots=True)
class Registration:
    """An understanding registered with a meta repository: where its rules live."""

    name: str
    description: str
    repository: str  # a URL, a local path, or "." for the meta repository itself
    branch: str = "main"
    folder: str = ""
    allowed_signers: str | None = None  # a path in the meta repository; then commits must verify
    gate: bool = False  # through it, only files one of its rules approves are listed

    @property
    def is_embedded(self) -> bool:
        """Return whether the rules live in the meta repository itself."""
        return self.repository == "."

    @classmethod
    def from_toml(cls, document: Mapping[str, Any], where: str) -> Registration:
        """Build from a parsed ``understandings/NAME.toml``."""
        reader = TableReader(document, where)
        reader.require_format()
        registration = cls(
            name=reader.string("name"),
            description=reader.string("description"),
            repository=reader.string("repository"),
            branch=reader.optional_string("branch") or "main",
            folder=reader.optional_string("folder") or "",
            allowed_signers=reader.optional_string("allowed-signers"),
            gate=reader.boolean("gate", default=False),
        )
        reader.reject_unknown()
        validate_understanding_name(registration.name)
        if registration.allowed_signers is not None and registration.is_embedded:
            # An embedded understanding is read at the meta commit, which the server trusts anyway.
            raise InvalidData(f"{where}: 'allowed-signers' needs a repository of its own, not '.'")
        return registration

    def to_toml(self) -> dict[str, Any]:
        """Return the canonical document."""
        document: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "repository": self.repository,
            "branch": self.branch,
        }
        if self.folder:
            document["folder"] = self.folder
        if self.allowed_signers is not None:
            document["allowed-signers"] = self.allowed_signers
        if self.gate:
            document["gate"] = True
        return document


def validate_understanding_name(name: str) -> str:
    """Return ``name`` if it can name an understanding."""
    return validate_label(name, "understanding name")
