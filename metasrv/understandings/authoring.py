"""Contributors' side of understandings: write an override on a branch, check a change."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.utils import NormalizedName

from metasrv.errors import InvalidData, InvalidInput, NotFound
from metasrv.model import Project, render_metadata
from metasrv.names import name_from_path, normalize_name
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import CommitId, Storage
from metasrv.understandings.mirrors import Deadlines, clone, fetch, git_url, origin_url
from metasrv.understandings.overrides import Layer, apply_layers
from metasrv.understandings.rules import Registration, Rule, RuleFile, rule_path


@dataclass(frozen=True, slots=True)
class Written:
    """Where an override was committed, and how to propose it."""

    repository: Path
    branch: str
    commit: CommitId
    path: str
    base_branch: str


def open_understanding_repository(
    registration: Registration, meta: Storage, workdir: Path, deadlines: Deadlines | None = None
) -> Storage:
    """Return the repository an override for ``registration`` is written to.

    Embedded understandings live in the meta repository; a local path is that repository; a URL
    is cloned (or fetched) under ``workdir`` by the git CLI within ``deadlines``, as the server's
    mirrors are, and nothing is ever pushed.
    """
    if registration.is_embedded:
        return meta
    local = Path(registration.repository).expanduser()
    if "://" not in registration.repository and local.exists():
        return Storage(local)
    deadlines = deadlines or Deadlines()
    url, path = git_url(registration.repository), workdir / registration.name
    # libgit2 has no network timeouts: a remote that never answers would hang the command.
    if not path.exists():
        clone(url, path, deadlines)
    elif origin_url(path) == url:
        fetch(url, path, deadlines)
    else:
        # Never replaced: it may be the contributor's own work.
        raise InvalidInput(f"{path} exists and is not a clone of {url}; pass another --workdir")
    return Storage(path)


def write_override(
    registration: Registration,
    repository: Storage,
    catalog: Catalog,
    meta_commit: CommitId,
    *,
    rule: Rule,
    project: str,
    branch: str | None,
    sign: Callable[[bytes], bytes] | None = None,
) -> Written:
    """Add ``rule`` to the project's rule file on a new branch, validated, as one commit."""
    normalized_name = normalize_name(project)
    canonical = catalog.get_project(meta_commit, normalized_name)
    base = repository.resolve(registration.branch)
    path = rule_path(registration.folder, normalized_name)
    existing = repository.read(base, path)
    rules = (
        RuleFile.from_toml(tomlcodec.loads(existing, where=path), path)
        if existing is not None
        else RuleFile(project=canonical.name)
    )
    for existing_rule in rules.rules:
        # The same selection and change under another id or reason would apply twice.
        if replace(existing_rule, id=rule.id, reason=rule.reason) == rule:
            raise InvalidInput(
                f"{path} already has this rule as {existing_rule.id!r}; nothing to add"
            )
    if any(r.id == rule.id for r in rules.rules):
        raise InvalidInput(f"{path} already has a rule with id {rule.id!r}; pass another --id")
    updated = replace(rules, rules=(*rules.rules, rule))
    problems = check_rule_file(updated, path, canonical)
    if problems:
        raise InvalidInput(problems[0])
    branch = branch or f"override/{normalized_name}/{rule.id}"
    if repository.branch_commit(branch) is not None:
        raise InvalidInput(f"branch {branch!r} exists already; pass another --branch")
    message = f"{canonical.name} {rule.spelled.get('versions', rule.versions)}: {rule.reason}"
    commit_id = repository.commit(
        branch,
        {path: tomlcodec.dumps(updated.to_toml())},
        message,
        start_point=base,
        sign=sign,
    )
    assert commit_id is not None
    return Written(
        repository.workdir or repository.path, branch, commit_id, path, registration.branch
    )


def derive_rule_id(action: str, target: str, versions: str) -> str:
    """Return a readable rule id from what the rule does."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{action} {target} {versions}".lower()).strip("-")
    return slug[:60] or "rule"


def check_rule_file(
    rules: RuleFile, path: str, canonical: Project, text: bytes | None = None
) -> list[str]:
    """Return every problem of one rule file against the project's canonical data, as file:line."""
    lines = _rule_lines(text or b"")
    problems = []
    if rules.normalized_name != canonical.normalized_name:
        problems.append(f"{path}:1: names project {rules.project!r}, not {canonical.name!r}")
    for rule in rules.rules:
        where = f"{path}:{lines.get(rule.id, 1)}: rule {rule.id!r}"
        selected = [r for r in canonical.releases if rule.versions.contains(r.version, True)]
        if not selected:
            problems.append(f"{where}: versions {str(rule.versions)!r} select no release")
        if not rule.is_bounded and not rule.open_ended:
            problems.append(
                f"{where}: versions {str(rule.versions)!r} have no upper bound and no "
                "uploaded-before, so the rule would grow to future releases; "
                "bound it or set open-ended = true"
            )
    for first_index, first in enumerate(rules.rules):
        for second in rules.rules[first_index + 1 :]:
            clash = _contradiction(first, second, canonical)
            if clash:
                line = lines.get(second.id, 1)
                problems.append(f"{path}:{line}: rules {first.id!r} and {second.id!r} {clash}")
    return problems


def _rule_lines(text: bytes) -> dict[str, int]:
    """Return the line each rule's ``id`` stands on, for file:line messages."""
    lines: dict[str, int] = {}
    for number, line in enumerate(text.decode("utf-8", "replace").splitlines(), start=1):
        match = re.match(r'\s*id\s*=\s*"([^"]*)"', line)
        if match:
            lines.setdefault(match.group(1), number)
    return lines


def _contradiction(first: Rule, second: Rule, canonical: Project) -> str | None:
    both = [
        r.version_text
        for r in canonical.releases
        if first.versions.contains(r.version, True) and second.versions.contains(r.version, True)
    ]
    if not both:
        return None
    if (
        first.requires_python is not None
        and second.requires_python is not None
        and first.requires_python != second.requires_python
    ):
        return f"set requires-python differently for {both[0]}"
    first_replaced = {str(r.name).lower(): str(r) for r in first.replace}
    for requirement in second.replace:
        earlier = first_replaced.get(str(requirement.name).lower())
        if earlier is not None and earlier != str(requirement):
            return f"replace {requirement.name} differently for {both[0]}"
    removed = set(first.remove) & {r.name.lower() for r in second.add}
    if removed:
        return f"remove and add {sorted(removed)[0]} for {both[0]}"
    return None


@dataclass
class CheckReport:
    """What ``metasrv check`` found: problems, and every release whose metadata changes."""

    problems: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)


def check_rules(
    repository: Storage,
    folder: str,
    *,
    head: CommitId,
    base: CommitId | None,
    catalog: Catalog,
    meta_commit: CommitId,
    gate: bool | None = None,
) -> CheckReport:
    """Validate every rule file of an understanding at ``head``; diff its effect on ``base``.

    ``gate`` says whether the registration is a gate (None: not known, so not checked).
    """
    report = CheckReport()
    for path, normalized_name in _rule_files(repository, folder, head):
        try:
            rules = _load(repository, head, path)
            canonical = catalog.get_project(meta_commit, normalized_name)
        except (InvalidData, NotFound, InvalidInput) as exc:
            report.problems.append(
                f"{path}: {exc.message}" if path not in exc.message else exc.message
            )
            continue
        text = repository.read(head, path)
        report.problems.extend(check_rule_file(rules, path, canonical, text))
        if gate is False:
            lines = _rule_lines(text or b"")
            report.problems.extend(
                f"{path}:{lines.get(rule.id, 1)}: rule {rule.id!r}: approve changes nothing "
                "in an understanding that is not a gate"
                for rule in rules.rules
                if rule.approve
            )
        before = _load_or_none(repository, base, path)
        report.changes.extend(_effect(canonical, path, before, rules))
    return report


def _rule_files(
    repository: Storage, folder: str, commit: CommitId
) -> Iterator[tuple[str, NormalizedName]]:
    prefix = folder.strip("/")
    tree_id = repository.tree_id(commit, prefix)
    if tree_id is None:
        return
    for relative, _blob in repository.walk_blobs(tree_id):
        if not relative.endswith(".toml") or relative.count("/") != 2:
            continue
        normalized_name = name_from_path(relative)
        path = f"{prefix}/{relative}" if prefix else relative
        if normalized_name is None:
            yield path, NormalizedName(relative.rsplit("/", 1)[-1].removesuffix(".toml"))
        else:
            yield path, normalized_name


def _load(repository: Storage, commit: CommitId, path: str) -> RuleFile:
    content = repository.read(commit, path)
    if content is None:
        raise NotFound(f"{path}: no such file")
    return RuleFile.from_toml(tomlcodec.loads(content, where=path), path)


def _load_or_none(repository: Storage, commit: CommitId | None, path: str) -> RuleFile | None:
    if commit is None or repository.read(commit, path) is None:
        return None
    try:
        return _load(repository, commit, path)
    except InvalidData:
        return None


def _effect(
    canonical: Project, path: str, before: RuleFile | None, after: RuleFile
) -> Iterator[str]:
    """Yield ``project version: field before -> after`` for every resolver-visible change."""
    for release in canonical.releases:
        # As a gate, so approvals are counted too; what a gate hides is not a metadata change.
        old_patched = apply_layers(release, [Layer("base", "", path, before, gate=True)])
        new_patched = apply_layers(release, [Layer("head", "", path, after, gate=True)])
        old, new = old_patched.release, new_patched.release
        old_view = {"yanked": old.yanked, **render_metadata(old.metadata)}
        new_view = {"yanked": new.yanked, **render_metadata(new.metadata)}
        where = f"{canonical.name} {release.version_text}"
        old_requirements, new_requirements = old_view["requires-dist"], new_view["requires-dist"]
        if old_requirements != new_requirements:
            # Reviewers read what changed, not the whole list.
            removed = [r for r in old_requirements or () if r not in (new_requirements or ())]
            added = [r for r in new_requirements or () if r not in (old_requirements or ())]
            yield f"{where}: requires-dist {removed!r} -> {added!r}"
        for key in ("requires-python", "yanked"):
            if old_view[key] != new_view[key]:
                yield f"{where}: {key} {old_view[key]!r} -> {new_view[key]!r}"
        old_approved = {a.filename for a in old_patched.approvals}
        new_approved = {a.filename for a in new_patched.approvals}
        for filename in sorted(new_approved - old_approved):
            yield f"{where}: approves {filename}"
        for filename in sorted(old_approved - new_approved):
            yield f"{where}: no longer approves {filename}"
