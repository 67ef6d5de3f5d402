"""Apply understandings to a release: rules in file order, understandings in client order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from functools import partial
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import Specifier, SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename

from metasrv.model import DistFile, Release
from metasrv.understandings.rules import Rule, RuleFile

Recorder = Callable[[str, str | None, Any, Any], None]


@dataclass(frozen=True, slots=True)
class Layer:
    """One understanding's rules for one project, read at one commit."""

    understanding: str
    commit: str
    path: str
    rules: RuleFile | None
    gate: bool = False  # list only the files its rules approve


def _fields_json(record: Any) -> dict[str, Any]:
    """Return a provenance record's wire form: every field, by its name, in declaration order."""
    return {item.name: getattr(record, item.name) for item in fields(record)}


@dataclass(frozen=True, slots=True)
class Patch:
    """One field a rule changed, with where the rule lives and why it exists."""

    field: str  # "requires-dist", "requires-python" or "yanked"
    dependency: str | None
    before: Any
    after: Any
    understanding: str
    commit: str
    file: str
    rule: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """Return the wire form: every field, by its name."""
        return _fields_json(self)


@dataclass(frozen=True, slots=True)
class FieldConflict:
    """A field that more than one understanding changed; the last one in client order won."""

    field: str
    dependency: str | None
    understandings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the wire form."""
        return {
            "field": self.field,
            "dependency": self.dependency,
            "understandings": list(self.understandings),
            "winner": self.understandings[-1],
        }


@dataclass(frozen=True, slots=True)
class Approval:
    """A file a gate's rule approved, with where the rule lives and why."""

    filename: str
    understanding: str
    commit: str
    file: str
    rule: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """Return the wire form: every field, by its name."""
        return _fields_json(self)


@dataclass(frozen=True, slots=True)
class PatchedRelease:
    """A release after its layers applied, the original, what changed it, and what is hidden."""

    release: Release
    original: Release
    patches: tuple[Patch, ...]
    conflicts: tuple[FieldConflict, ...]
    approvals: tuple[Approval, ...] = ()
    hidden: tuple[tuple[str, str], ...] = ()  # (filename, why), in file order

    @property
    def hidden_reasons(self) -> dict[str, str]:
        """Return why each hidden file is hidden, by filename."""
        return dict(self.hidden)

    @property
    def hidden_release(self) -> str | None:
        """Return why the whole release is hidden (every file of it is), else None."""
        if not self.original.files or len(self.hidden) < len(self.original.files):
            return None
        return self.hidden[0][1]


def apply_layers(release: Release, layers: Sequence[Layer]) -> PatchedRelease:
    """Apply each layer's rules to every file of a release; a later layer sees earlier results."""
    files = list(release.files)
    patches: list[Patch] = []
    approvals: list[Approval] = []
    changed_by: dict[tuple[str, str | None], list[str]] = {}
    for layer in layers:
        if layer.rules is None:
            continue
        for rule in layer.rules.rules:
            if not rule.versions.contains(release.version, prereleases=True):
                continue
            for index, dist_file in enumerate(files):
                if not selects_file(rule, dist_file):
                    continue
                if rule.approve and layer.gate:
                    approvals.append(
                        Approval(
                            dist_file.filename,
                            layer.understanding,
                            layer.commit,
                            layer.path,
                            rule.id,
                            rule.reason,
                        )
                    )
                patched, file_patches = apply_rule(rule, dist_file, layer)
                files[index] = patched
                for patch in file_patches:
                    if patch not in patches:
                        patches.append(patch)
                    owners = changed_by.setdefault((patch.field, patch.dependency), [])
                    if layer.understanding not in owners:
                        owners.append(layer.understanding)
    conflicts = tuple(
        FieldConflict(field, dependency, tuple(owners))
        for (field, dependency), owners in changed_by.items()
        if len(owners) > 1
    )
    patched_release = Release.from_files(release.version_text, tuple(files)) if patches else release
    return PatchedRelease(
        patched_release,
        release,
        tuple(patches),
        conflicts,
        tuple(approvals),
        _withheld(release.files, layers, approvals),
    )


def _withheld(
    files: Sequence[DistFile], layers: Sequence[Layer], approvals: Sequence[Approval]
) -> tuple[tuple[str, str], ...]:
    """Return the files a gate did not approve; each gate in the view has its own say."""
    hidden: dict[str, str] = {}
    for layer in layers:
        if not layer.gate:
            continue
        approved = {a.filename for a in approvals if a.understanding == layer.understanding}
        for dist_file in files:
            if dist_file.filename not in approved:
                hidden.setdefault(
                    dist_file.filename, f"not approved by the gate {layer.understanding!r}"
                )
    return tuple(hidden.items())


def selects_file(rule: Rule, dist_file: DistFile) -> bool:
    """Return whether a rule's upload-time cutoff and file filter select a file."""
    if rule.uploaded_before is not None:
        uploaded = parse_upload_time(dist_file.upload_time)
        if uploaded is None or uploaded >= rule.uploaded_before:
            return False
    is_wheel = dist_file.filename.endswith(".whl")
    if rule.files == "wheels":
        return is_wheel
    if rule.files == "sdists":
        return not is_wheel
    if rule.files is not None:
        if not is_wheel:
            return False
        tags = parse_wheel_filename(dist_file.filename)[3]
        return any(str(tag) == rule.files for tag in tags)
    return True


def parse_upload_time(text: str | None) -> datetime | None:
    """Return a file's upload time, or None when it is absent or not ISO 8601."""
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed


def apply_rule(rule: Rule, dist_file: DistFile, layer: Layer) -> tuple[DistFile, list[Patch]]:
    """Return a file with one rule's changes, and a patch for every field that changed."""
    patches: list[Patch] = []

    def record(field: str, dependency: str | None, before: Any, after: Any) -> None:
        if before != after:
            patches.append(
                Patch(
                    field,
                    dependency,
                    before,
                    after,
                    layer.understanding,
                    layer.commit,
                    layer.path,
                    rule.id,
                    rule.reason,
                )
            )

    metadata = dist_file.metadata
    requires_python = dist_file.requires_python
    if metadata is not None:
        requirements = list(metadata.requires_dist)
        for name in rule.relax:
            requirements = _edit(requirements, name, record, _relaxed)
        for new in rule.replace:
            requirements = _edit(
                requirements, canonicalize_name(new.name), record, partial(_replaced, new=new)
            )
        for name in rule.remove:
            requirements = _edit(requirements, name, record, _removed)
        for new in rule.add:
            if str(new) not in requirements:
                record("requires-dist", canonicalize_name(new.name), None, str(new))
                requirements.append(str(new))
        new_requires_python = metadata.requires_python
        if rule.requires_python is not None:
            new_requires_python = str(rule.requires_python)
            record("requires-python", None, metadata.requires_python, new_requires_python)
            requires_python = new_requires_python
        metadata = replace(
            metadata, requires_dist=tuple(requirements), requires_python=new_requires_python
        )
    yanked = dist_file.yanked
    if rule.yank is not None:
        record("yanked", None, dist_file.yanked, rule.yank)
        yanked = rule.yank
    patched = replace(dist_file, metadata=metadata, requires_python=requires_python, yanked=yanked)
    return patched, patches


def _edit(
    requirements: list[str],
    name: NormalizedName,
    record: Recorder,
    change: Callable[[Requirement], Requirement | None],
) -> list[str]:
    """Apply ``change`` to every requirement on ``name``; None from it removes the requirement."""
    edited = []
    for text in requirements:
        parsed = _parse(text)
        if parsed is None or canonicalize_name(parsed.name) != name:
            edited.append(text)
            continue
        new = change(parsed)
        new_text = None if new is None else str(new)
        # An unchanged requirement keeps its original spelling.
        if new_text is not None and new_text == str(parsed):
            new_text = text
        record("requires-dist", name, text, new_text)
        if new_text is not None:
            edited.append(new_text)
    return edited


def _parse(text: str) -> Requirement | None:
    try:
        return Requirement(text)
    except InvalidRequirement:
        return None


def _relaxed(requirement: Requirement) -> Requirement:
    relaxed = Requirement(str(requirement))
    relaxed.specifier = relax_specifier(requirement.specifier)
    return relaxed


def _removed(_requirement: Requirement) -> None:
    return None


def _replaced(old: Requirement, new: Requirement) -> Requirement:
    replacement = Requirement(str(new))
    if replacement.marker is None:
        replacement.marker = old.marker  # the condition it applied under still holds
    return replacement


def relax_specifier(specifier: SpecifierSet) -> SpecifierSet:
    """Drop upper bounds: <, <= go; ==X, ==X.*, ~=X become >=X; others stay."""
    kept = []
    for spec in specifier:
        if spec.operator in ("<", "<="):
            continue
        if spec.operator == "==":
            kept.append(Specifier(f">={spec.version.removesuffix('.*')}"))
        elif spec.operator == "~=":
            kept.append(Specifier(f">={spec.version}"))
        else:
            kept.append(spec)
    return SpecifierSet(",".join(str(spec) for spec in kept))
