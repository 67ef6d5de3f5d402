"""Contributor subcommands: register an understanding, write an override, check a change."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from metasrv.errors import InvalidInput
from metasrv.markers import SETS_FOLDER, MarkerSet, MarkerSets, generate_environments, parse_date
from metasrv.names import normalize_name, validate_label
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from metasrv.understandings.authoring import (
    check_rules,
    derive_rule_id,
    open_understanding_repository,
    write_override,
)
from metasrv.understandings.mirrors import Deadlines
from metasrv.understandings.registry import Understandings, registration_path
from metasrv.understandings.rules import Registration, Rule, validate_understanding_name
from metasrv.understandings.signatures import SshSigner, signing_key, unverified_commits

ACTION_FLAGS = ("relax", "replace", "remove", "add", "requires_python", "yank", "approve")


def open_repository(path: Path | None) -> Storage:
    """Open ``path``, or the repository the current folder is in."""
    return Storage(path) if path is not None else Storage.discover(Path.cwd())


def _add_understanding_parser(commands: Any) -> None:
    understanding = commands.add_parser(
        "understanding",
        help="manage registered understandings",
        description="Register understandings: groups' git repositories of overrides of "
        "dependency metadata, which clients opt into with /u/NAME/simple/ or ?understanding=NAME. "
        "A registration is a file in the meta repository's understandings/ folder; the server "
        "mirrors the repository it names and serves its rules.",
    )
    actions = understanding.add_subparsers(required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="register an understanding and commit",
        description="Register the understanding NAME: write understandings/NAME.toml (its "
        "repository, branch (default main), rule folder, description, whether it is a gate, "
        "and with --allowed-signers the file of keys whose signatures it must carry, committed "
        "beside it) and commit it on the meta repository's checked-out branch. A repository "
        "URL must be allowed by metasrv.toml's [understandings] allow list.",
    )
    add.add_argument("name")
    add.add_argument("--repository", required=True, help="URL or path of its git repository")
    add.add_argument("--branch", default="main")
    add.add_argument("--folder", default="", help="folder of its rules inside that repository")
    add.add_argument("--description", required=True)
    add.add_argument("--gate", action="store_true", help="list only the files its rules approve")
    add.add_argument(
        "--allowed-signers",
        type=Path,
        metavar="FILE",
        help="OpenSSH allowed_signers file, committed beside the registration: then only commits "
        "signed by its keys are served",
    )
    add.add_argument("--repo", type=Path, help="meta repository (default: the one run in)")
    add.set_defaults(handler=_understanding_add)


def add_parsers(commands: Any) -> None:
    """Add the contributor subcommands to the ``metasrv`` parser."""
    _add_understanding_parser(commands)

    override = commands.add_parser(
        "override",
        help="write an override on a new branch",
        description="Write one rule into an understanding's rule file for PROJECT: for the "
        "releases --versions selects, relax, replace, remove or add a requirement, set "
        "Requires-Python, yank, or approve (in a gate), with --reason saying why. The rule is "
        "committed on a new branch (default: derived from the change) of the understanding's "
        "repository, without touching its working tree, ready for a pull request; nothing is "
        "pushed. A registration whose repository is a URL is cloned or fetched into --workdir "
        "(default: the current folder) within --git-timeout. A rule identical to one already "
        "in the file is refused.",
    )
    override.add_argument("project")
    override.add_argument("--understanding", required=True)
    override.add_argument("--versions", required=True, help="PEP 440 specifier set")
    changes = override.add_mutually_exclusive_group(required=True)
    changes.add_argument("--relax", metavar="DEP", help="drop DEP's upper bounds")
    changes.add_argument("--replace", metavar="REQ", help="replace the requirement on REQ's name")
    changes.add_argument("--remove", metavar="DEP", help="remove the requirement on DEP")
    changes.add_argument("--add", metavar="REQ", help="add a requirement")
    changes.add_argument("--requires-python", metavar="SPEC", help="set Requires-Python")
    changes.add_argument("--yank", metavar="REASON", help="yank the releases")
    changes.add_argument(
        "--approve",
        action="store_const",
        const=True,
        help="approve the releases' files (the understanding must be a gate)",
    )
    override.add_argument("--reason", required=True)
    override.add_argument("--id", help="rule id (default: derived from the change)")
    override.add_argument("--uploaded-before", help="select only files uploaded before (ISO 8601)")
    override.add_argument("--files", help="wheels, sdists, or a wheel tag")
    override.add_argument("--open-ended", action="store_true", help="allow no upper bound")
    override.add_argument("--branch", help="branch to commit on (default: derived)")
    override.add_argument("--repo", type=Path, help="meta repository (default: the one run in)")
    override.add_argument("--workdir", type=Path, default=Path(), help="where URLs are cloned")
    override.add_argument(
        "--git-timeout",
        type=float,
        default=Deadlines().whole_seconds,
        help="seconds the clone or fetch of a URL may take (default: %(default)g)",
    )
    override.set_defaults(handler=_override)

    markers = commands.add_parser(
        "markers",
        help="known marker sets",
        description="Known marker sets: named sets of full PEP 508 environments (platforms, "
        "interpreters and their versions), kept in markers/ of the meta repository, so that a "
        "lock tool can resolve for machines it is not running on. They are generated from the "
        "facts in markers/facts/ (interpreters and platforms).",
    )
    marker_actions = markers.add_subparsers(required=True, metavar="ACTION")
    generate = marker_actions.add_parser(
        "generate",
        help="write a marker set from the facts",
        description="Write markers/sets/NAME.toml: one environment per platform, interpreter "
        "and architecture supported within --months of --as-of (default: today), for the "
        "--platforms and --implementations (default: cpython) named, from markers/facts/; "
        "then commit it on the meta repository's checked-out branch.",
    )
    generate.add_argument("name")
    generate.add_argument("--platforms", required=True, help="comma list: linux,macos,windows")
    generate.add_argument("--months", type=int, required=True, help="support window in months")
    generate.add_argument("--as-of", help="YYYY-MM-DD (default: today)")
    generate.add_argument("--implementations", default="cpython", help="comma list: cpython,pypy")
    generate.add_argument("--description", help="one line (default: derived)")
    generate.add_argument("--repo", type=Path, help="meta repository (default: the one run in)")
    generate.set_defaults(handler=_markers_generate)

    check = commands.add_parser(
        "check",
        help="validate an understanding and show its effect",
        description="Validate the rule files in FOLDER (default: the current folder), an "
        "understanding's working tree, and print each problem as file:line; then, against the "
        "canonical data in --repo, print each release a rule changes as before -> after "
        "(with --base, only what changed since that ref). With --understanding, report commits "
        "that do not verify against its allowed signers. Exits 1 on a problem; writes nothing.",
    )
    check.add_argument("folder", nargs="?", type=Path, default=Path(), help="its rules' folder")
    check.add_argument("--repo", type=Path, help="meta repository with the canonical data")
    check.add_argument("--base", help="ref to compare against (e.g. origin/main)")
    check.add_argument(
        "--understanding", help="its registration in --repo: commits must verify if it says so"
    )
    check.set_defaults(handler=_check)


def _understanding_add(args: argparse.Namespace) -> int:
    meta = open_repository(args.repo)
    name = validate_understanding_name(args.name)
    local = Path(args.repository).expanduser()
    if args.repository != "." and "://" not in args.repository and not local.exists():
        raise InvalidInput(f"repository {args.repository!r} is neither a URL nor a local path")
    registration = Registration(
        name=name,
        description=args.description,
        repository=str(local.resolve())
        if local.exists() and args.repository != "."
        else args.repository,
        branch=args.branch,
        folder=args.folder.strip("/"),
        gate=args.gate,
    )
    path = registration_path(name)
    if meta.read(meta.resolve(None), path) is not None:
        raise InvalidInput(f"understanding {name!r} is registered already ({path})")
    files: dict[str, bytes | None] = {}
    if args.allowed_signers is not None:
        if registration.is_embedded:
            raise InvalidInput("--allowed-signers needs a repository of its own, not '.'")
        signers_path = path.removesuffix(".toml") + ".allowed_signers"
        files[signers_path] = _read_allowed_signers(args.allowed_signers)
        registration = replace(registration, allowed_signers=signers_path)
    files[path] = tomlcodec.dumps(registration.to_toml())
    meta.commit(meta.head_branch(), files, f"Register understanding {name}")
    print(f"registered understanding {name!r} in {path}")
    return 0


def _read_allowed_signers(path: Path) -> bytes:
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read --allowed-signers {path}: {exc.strerror}") from None
    lines = [line for line in content.splitlines() if line.strip() and not line.startswith(b"#")]
    # principals, [options,] key type and key: fewer than three fields cannot name a key.
    if not lines or any(len(line.split()) < 3 for line in lines):
        raise InvalidInput(
            f"{path} is not an allowed_signers file: expected 'principals key-type key'"
        )
    return content


def _override(args: argparse.Namespace) -> int:
    meta = open_repository(args.repo)
    meta_commit = meta.resolve(None)
    understandings = Understandings(meta, args.workdir)
    registration = understandings.get(meta_commit, args.understanding)
    rule = _rule_from_args(args)
    if rule.approve and not registration.gate:
        raise InvalidInput(
            f"understanding {registration.name!r} is not a gate, so --approve would change nothing"
        )
    if args.git_timeout <= 0:
        raise InvalidInput("--git-timeout must be positive")
    deadlines = Deadlines.within(args.git_timeout)
    repository = open_understanding_repository(registration, meta, args.workdir, deadlines)
    key = signing_key(repository)
    written = write_override(
        registration,
        repository,
        Catalog(meta),
        meta_commit,
        rule=rule,
        project=args.project,
        branch=args.branch,
        sign=SshSigner(key) if key is not None else None,
    )
    signed = f", signed with {key}" if key is not None else ""
    print(f"committed {written.commit[:12]} on branch {written.branch} ({written.path}){signed}")
    print(f"in {written.repository}; nothing was pushed. To propose it:")
    print(f"  git -C {written.repository} push origin {written.branch}")
    print(f"  then open a pull request of {written.branch} against {written.base_branch}")
    return 0


def _rule_from_args(args: argparse.Namespace) -> Rule:
    action = next(flag for flag in ACTION_FLAGS if getattr(args, flag) is not None)
    value: str = args.project if action == "approve" else getattr(args, action)
    try:
        versions = SpecifierSet(args.versions)
        fields: dict[str, Any] = {
            "relax": (normalize_name(value),) if action == "relax" else (),
            "remove": (normalize_name(value),) if action == "remove" else (),
            "replace": (Requirement(value),) if action == "replace" else (),
            "add": (Requirement(value),) if action == "add" else (),
            "requires_python": SpecifierSet(value) if action == "requires_python" else None,
            "yank": value if action == "yank" else None,
            "approve": action == "approve",
        }
    except InvalidSpecifier as exc:
        raise InvalidInput(str(exc)) from None
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise InvalidInput(f"invalid requirement {value!r}: {reason}") from None
    document = Rule(
        id=args.id or derive_rule_id(action.replace("_", "-"), value, args.versions),
        versions=versions,
        reason=args.reason,
        files=args.files,
        open_ended=args.open_ended,
        **fields,
    ).to_toml()
    # The file keeps the contributor's spelling, as a hand-written rule would.
    document["versions"] = args.versions
    if action in ("replace", "add", "requires_python"):
        document[action.replace("_", "-")] = value if action == "requires_python" else [value]
    if args.uploaded_before:
        document["uploaded-before"] = args.uploaded_before
    # Round-trip through the file format so the CLI accepts exactly what a file may hold.
    return Rule.from_toml(document, "the command line")


def _markers_generate(args: argparse.Namespace) -> int:
    meta = open_repository(args.repo)
    name = validate_label(args.name, "marker set name")
    if args.months < 0:
        raise InvalidInput("--months must not be negative")
    as_of = parse_date(args.as_of, "--as-of") if args.as_of else date.today()
    families = [f.strip() for f in args.platforms.split(",") if f.strip()]
    implementations = [i.strip() for i in args.implementations.split(",") if i.strip()]
    pythons, platforms = MarkerSets(meta).facts(meta.resolve(None))
    environments = generate_environments(
        pythons,
        platforms,
        families=families,
        months=args.months,
        as_of=as_of,
        implementations=implementations,
    )
    description = args.description or (
        f"Every {'/'.join(families)} environment of {'/'.join(implementations)} versions "
        f"supported at any time in the {args.months} months up to {as_of.isoformat()}."
    )
    generator = {
        "platforms": families,
        "months": args.months,
        "implementations": implementations,
        "as-of": as_of.isoformat(),
    }
    marker_set = MarkerSet(name, description, generator, tuple(environments))
    path = f"{SETS_FOLDER}/{name}.toml"
    meta.commit(
        meta.head_branch(), {path: tomlcodec.dumps(marker_set.to_toml())}, f"Marker set {name}"
    )
    print(f"wrote {path}: {len(environments)} environments")
    return 0


def _check(args: argparse.Namespace) -> int:
    repository = Storage.discover(args.folder.resolve())
    workdir = repository.workdir
    if workdir is None:
        raise InvalidInput("check runs in a working copy of the understanding's repository")
    folder = args.folder.resolve().relative_to(workdir.resolve()).as_posix().strip(".")
    meta = open_repository(args.repo) if args.repo else repository
    meta_commit = meta.resolve(None)
    head = repository.head_commit()
    base = repository.resolve(args.base) if args.base else None
    registration = (
        Understandings(meta).get(meta_commit, args.understanding) if args.understanding else None
    )
    report = check_rules(
        repository,
        folder,
        head=head,
        base=base,
        catalog=Catalog(meta),
        meta_commit=meta_commit,
        gate=registration.gate if registration is not None else None,
    )
    if registration is not None:
        signers = Understandings(meta).allowed_signers(registration, meta_commit)
        if signers is not None:
            report.problems.extend(unverified_commits(repository, head, base, signers))
    for problem in report.problems:
        print(problem, file=sys.stderr)
    against = f"against {args.base}" if args.base else "against no rules"
    print(f"effective change {against}: {len(report.changes)} field(s)")
    for change in report.changes:
        print(f"  {change}")
    return 1 if report.problems else 0
