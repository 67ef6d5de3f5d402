"""``metasrv show``: a project or a release in a terminal, as the read API answers it."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from metasrv.cli.contribute import open_repository
from metasrv.http.readapi import Answer, ReadApi
from metasrv.markers import MarkerSets
from metasrv.repo.catalog import Catalog
from metasrv.understandings.registry import Understandings


def add_parsers(commands: Any) -> None:
    """Add the ``show`` subcommand."""
    show = commands.add_parser(
        "show",
        help="print a project or a release",
        description="Print a project's versions (files, requires-python, yanks) or one "
        "release's requirements and files, as the JSON API answers them, read from HEAD's "
        "branch (or metasrv.toml's [pull-through] branch once it exists) unless --at names "
        "another commit. --understanding applies understandings and says what each patched; "
        "--cooldown hides files younger than that; --json prints the API's JSON. A project not "
        "in git is first pulled from the source and committed to that branch, unless --offline; "
        "nothing else is written.",
    )
    show.add_argument("project", help="a project name, any spelling")
    show.add_argument("version", nargs="?", help="a release (default: the whole project)")
    show.add_argument("--repo", type=Path, help="meta repository (default: the one run in)")
    show.add_argument("--at", help="commit sha, branch or tag (default: HEAD's branch)")
    show.add_argument("--json", action="store_true", help="print the read API's JSON")
    show.add_argument("--understanding", help="apply understandings: name[@commit],...")
    show.add_argument("--cooldown", help="hide files younger than this at the commit: 7d, 12h")
    show.add_argument(
        "--offline", action="store_true", help="never ask the source for a project not in git"
    )
    show.set_defaults(handler=_show)


def _show(args: argparse.Namespace) -> int:
    from metasrv.http.app import open_pull_through
    from metasrv.http.pulling import PulledReads

    storage = open_repository(args.repo)
    # The terminal shows exactly what the read API answers, computed by the same code.
    understandings = Understandings(storage)
    read_api = ReadApi(Catalog(storage), understandings, MarkerSets(storage))
    if args.understanding:
        # A terminal may wait for a mirror; the server never does on its event loop.
        understandings.prepare_blocking(read_api.pin(args.at).commit_id, args.understanding)
    layered = args.understanding is not None or args.cooldown is not None

    def read() -> Answer:
        if args.version is None:
            if layered:
                return read_api.patched_project(
                    args.at, args.project, args.understanding, args.cooldown
                )
            return read_api.project(args.at, args.project)
        if layered:
            return read_api.patched_release(
                args.at, args.project, args.version, args.understanding, args.cooldown
            )
        return read_api.release(args.at, args.project, args.version)

    # Like the server, a project not in git is pulled through from the source first.
    # Offline too: it names the data branch that unpinned reads follow.
    pull = open_pull_through(storage, read_api.catalog, offline=args.offline)
    pulled = PulledReads(pull, recheck=False)  # it exits once it has answered
    try:
        answer, _ = asyncio.run(pulled.answer(args.at, args.project, args.version, read))
    finally:
        if pull is not None:
            pull.close()
    document = json.loads(answer.content())
    if args.json:
        print(json.dumps(document, indent=2))
    elif args.version is None:
        print(_format_project(document))
    else:
        print(_format_release(document))
    return 0


def _format_project(document: dict[str, Any]) -> str:
    lines = [f"{document['name']} ({document['normalized-name']}) at {document['at'][:12]}"]
    versions = document["versions"]
    width = max((len(v["version"]) for v in versions), default=0)
    for version in versions:
        notes = [f"{version['files']} file{'s' if version['files'] != 1 else ''}"]
        if version["requires-python"]:
            notes.append(f"requires-python {version['requires-python']}")
        if version["yanked"]:
            yanked = version["yanked"]
            notes.append("yanked" if yanked is True else f"yanked: {yanked}")
        if version.get("hidden"):
            notes.append(f"hidden: {version['hidden']}")
        lines.append(f"  {version['version']:<{width}}  {', '.join(notes)}")
    return "\n".join(lines)


def _metadata_state(dist_file: dict[str, Any]) -> str:
    status, reason = dist_file["metadata-status"], dist_file["metadata-reason"]
    return status if reason is None else f"{status}: {reason}"


def _format_release(document: dict[str, Any]) -> str:
    lines = [f"{document['name']} {document['version']} at {document['at'][:12]}"]
    if document["yanked"]:
        lines.append(f"yanked: {document['yanked']}")
    if document["requires-dist"] is None:
        reasons = sorted({_metadata_state(f) for f in document["files"]})
        lines.append(f"core metadata: unknown ({'; '.join(reasons) or 'no files'})")
    else:
        lines.append(f"requires-python: {document['requires-python'] or '(any)'}")
        lines.append(f"provides-extra: {', '.join(document['provides-extra']) or '(none)'}")
        lines.append("requires-dist:" + ("" if document["requires-dist"] else " (none)"))
        lines.extend(f"  {requirement}" for requirement in document["requires-dist"])
    for patch in document.get("patches", ()):
        lines.append(
            f"patched by {patch['understanding']} ({patch['rule']}): {patch['field']} "
            f"{patch['before']!r} -> {patch['after']!r}; {patch['reason']}"
        )
    for approval in document.get("approvals", ()):
        lines.append(
            f"approved by {approval['understanding']} ({approval['rule']}): "
            f"{approval['filename']}; {approval['reason']}"
        )
    lines.append("files:")
    for dist_file in document["files"]:
        note = ""
        if dist_file["metadata-status"] not in ("known", "built"):
            note = f" (metadata {_metadata_state(dist_file)})"
        elif "metadata" in dist_file:
            note = " (own metadata)"
        if dist_file.get("hidden"):
            note += f" (hidden: {dist_file['hidden']})"
        lines.append(f"  {dist_file['filename']}  {dist_file['size'] or '?'} bytes{note}")
    return "\n".join(lines)
