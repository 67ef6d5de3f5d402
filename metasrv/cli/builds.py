"""``metasrv build-metadata``: build dynamic sdists' metadata in a sandbox; translation only."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metasrv.cli.contribute import open_repository
from metasrv.errors import InvalidInput
from metasrv.repo.catalog import CONFIG_PATH, Catalog
from metasrv.repo.storage import Storage

if TYPE_CHECKING:
    from metasrv.index.buildrun import BuildOptions

MEGABYTE = 1024 * 1024


def add_parsers(commands: Any) -> None:
    """Add the ``build-metadata`` subcommand."""
    build = commands.add_parser(
        "build-metadata",
        help="build dynamic sdists' metadata in a sandbox and commit it",
        description="Compute the core metadata of sdists recorded as metadata-status "
        '"dynamic" (a PKG-INFO older than 2.2) by running their build backend in a bubblewrap '
        "sandbox without network, its build requirements installed as wheels only from "
        "--index-url (default: metasrv.toml's [builds] index-url, else its source) into "
        "environments kept where [builds] environments says (default: "
        "~/.cache/metasrv/build-envs). Each result is committed on the "
        "file, one commit per project, on pull-through's branch if it has one: "
        '"built", with the metadata and its METADATA document (stored under core-metadata/ '
        'and served as the .metadata), or "build-failed" with the reason. Limits come from '
        "metasrv.toml's [builds] (defaults: 120 s wall and CPU time, 4096 MB, 64 processes, "
        "256 MB of output). Exit status 1 when some build failed, 2 for usage errors.",
    )
    build.add_argument("projects", nargs="*", metavar="PROJECT", help="default: every project")
    build.add_argument("--repo", type=Path, help="meta repository (default: the one run in)")
    build.add_argument(
        "--index-url", help="index for build requirements (default: metasrv.toml's [builds])"
    )
    build.add_argument("--retry-failed", action="store_true", help="build failed sdists again")
    build.set_defaults(handler=_build_metadata)


def _build_metadata(args: argparse.Namespace) -> int:
    from metasrv.index.buildrun import build_metadata
    from metasrv.index.builds import BuildResult

    storage = open_repository(args.repo)
    options = build_options(storage, index_url=args.index_url, retry_failed=args.retry_failed)

    def progress(filename: str, result: BuildResult) -> None:
        outcome = "built" if result.reason is None else f"failed: {result.reason}"
        print(f"{filename}: {outcome} ({result.seconds:.1f} s)", file=sys.stderr)

    summary = build_metadata(storage, args.projects, options, progress)
    line = (
        f"built {summary.built}, failed {summary.failed}, not downloaded "
        f"{summary.not_downloaded}, {len(summary.commits)} commits"
    )
    if summary.seconds:
        ordered = sorted(summary.seconds)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        line += f"; per build: median {statistics.median(ordered):.1f} s, p95 {p95:.1f} s"
    print(line)
    for reason, count in summary.reasons.most_common():
        print(f"  {count:5d}  {reason}")
    return 1 if summary.failed else 0


def build_options(
    storage: Storage, *, index_url: str | None = None, retry_failed: bool = False
) -> BuildOptions:
    """Return the build options ``metasrv.toml``'s ``[builds]`` gives, with overrides."""
    from metasrv.index.buildrun import BuildOptions
    from metasrv.index.sandbox import Limits

    config = Catalog(storage).config(storage.resolve(None))
    builds = config.builds
    url = index_url or builds.index_url or config.source_url
    if url is None:
        raise InvalidInput(f"no --index-url given and {CONFIG_PATH} names no index or source")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    environments = (
        Path(builds.environments) if builds.environments else cache / "metasrv" / "build-envs"
    )
    limits = Limits(
        wall_seconds=builds.wall_seconds,
        cpu_seconds=builds.cpu_seconds,
        memory_bytes=builds.memory_mb * MEGABYTE,
        processes=builds.processes,
        output_bytes=builds.output_mb * MEGABYTE,
    )
    # Builds are recorded where pull-through commits, when it has a branch of its own.
    storage.data_branch = config.pull_through.branch
    branch = storage.served_branch()
    return BuildOptions(url, environments, limits, retry_failed=retry_failed, branch=branch)


def start_background_builds(storage: Storage) -> None:
    """After a sync: build new dynamic sdists in a process of their own, if metasrv.toml says so."""
    from metasrv.index.buildrun import LOG_NAME, start_in_background

    if not Catalog(storage).config(storage.resolve(None)).builds.enabled:
        return
    pid = start_in_background(storage)
    if pid is None:
        print("building metadata: a run under way will look again", flush=True)
    else:
        log = storage.path / LOG_NAME
        print(f"building metadata in the background (pid {pid}), log {log}", flush=True)
