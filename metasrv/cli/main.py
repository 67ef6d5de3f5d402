"""The ``metasrv`` command: argparse subcommands translated into calls; ``main(argv) -> int``."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metasrv.cli import builds, show
from metasrv.cli.contribute import add_parsers, open_repository
from metasrv.config import MetaConfig
from metasrv.errors import InvalidInput, MetasrvError
from metasrv.http.fastpath import ServerProtocol
from metasrv.http.guard import DEFAULT_HEADER_TIMEOUT_SECONDS, DEFAULT_MAX_CONNECTIONS
from metasrv.index.client import FetchOptions
from metasrv.index.closure import sync_with_dependencies
from metasrv.index.sync import SyncOptions, SyncSummary, sync
from metasrv.index.wholeindex import follow, sync_all
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import CONFIG_PATH, Catalog
from metasrv.repo.storage import Storage

FOLDER_README = (
    "# {folder}/\n\nThis folder of a metasrv meta repository holds {what}; its format is "
    "specified in metasrv's own `{folder}/README.md`.\n"
)
FOLDERS = {
    "data": "canonical project metadata, one TOML file per project",
    "understandings": "registrations of understandings",
    "markers": "named marker sets",
}


DESCRIPTION = (
    "A meta server for Python package indexes: mirror an index's metadata into git, correct it "
    "with understandings, and serve it to pip, uv, Poetry, PDM and pip-tools."
)


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already says it or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            text
            and "default" not in text
            and default not in (None, False, argparse.SUPPRESS, [])
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


class _ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are MetasrvErrors (one line, exit code 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InvalidInput(f"{self.prog}: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except MetasrvError as exc:
        print(f"metasrv: error: {exc.message}", file=sys.stderr)
        return exc.exit_code


def run() -> None:
    """Entry point of the console script."""
    try:
        sys.exit(main())
    except BrokenPipeError:
        # The reader went away (`metasrv show x | head`); that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


def _build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="metasrv",
        description=DESCRIPTION,
        epilog="Run 'metasrv COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--version", action="version", version=f"metasrv {importlib.metadata.version('metasrv')}"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_ArgumentParser)

    init = commands.add_parser(
        "init",
        help="create a new meta repository",
        description="Create a meta repository in PATH, a new or empty folder: a git repository "
        "whose one commit holds metasrv.toml (naming --source as the index that sync and "
        "pull-through read; without it, sync needs --source) and a README in data/, "
        "understandings/ and markers/. Nothing is fetched.",
    )
    init.add_argument("path", type=Path, help="a new or empty folder")
    init.add_argument("--source", help="URL of the source repository (a PEP 503 / 691 index)")
    init.set_defaults(handler=_init)

    serve = commands.add_parser(
        "serve",
        help="serve a meta repository over HTTP",
        description="Serve the meta repository's data on http://127.0.0.1:8000 by default: the "
        "simple API for installers (/simple/, /u/UNDERSTANDINGS/simple/) and the JSON API "
        "(/v1/). Reads follow HEAD's branch, or metasrv.toml's [pull-through] branch once it "
        "exists. Unless --offline, a project the data lacks is fetched from metasrv.toml's "
        "source on its first request and committed to that branch; nothing else is committed. "
        "Understandings are mirrored under .git/metasrv-mirrors (or --mirrors), rewritten "
        "wheels kept under .git/metasrv-wheels. Refuses a repository without metasrv.toml.",
    )
    serve.add_argument("--repo", type=Path, help="meta repository (default: the one run in)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    serve.add_argument(
        "--fetch-interval", type=float, default=10.0, help="seconds between mirror fetches"
    )
    serve.add_argument("--mirrors", type=Path, help="where understandings are mirrored")
    serve.add_argument(
        "--workers", type=int, default=1, help="server processes sharing the port (default 1)"
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT_SECONDS,
        help="seconds a connection may take to send a request's headers (default: 10)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="open connections per process; more are closed at once (default: 512)",
    )
    serve.add_argument(
        "--git-timeout",
        type=float,
        default=120.0,
        help="seconds any clone or fetch of an understanding may take (default: 120)",
    )
    serve.add_argument(
        "--offline", action="store_true", help="serve only what is in git; never ask the source"
    )
    serve.add_argument(
        "--quiet", action="store_true", help="no line per request, pull-through or failed rewrite"
    )
    serve.set_defaults(handler=_serve)

    sync = commands.add_parser(
        "sync",
        help="mirror the source repository into data/ and commit",
        description="Read the named projects' pages from the source (--source, default "
        "metasrv.toml's) and each new file's core metadata (its PEP 658 file, else the wheel by "
        "range requests, else the sdist's PKG-INFO), write data/ (and core-metadata/ for "
        "documents the source does not serve) and commit on the checked-out branch every "
        "--checkpoint projects. Pages are asked for conditionally: nothing new, no commit. "
        "--all syncs every project the source lists and removes those it no longer lists. "
        "Exit status 0 when everything landed, 1 when files or projects were recorded as "
        "errors, 2 for usage or source errors.",
    )
    sync.add_argument("projects", nargs="*", metavar="PROJECT", help="projects to sync")
    sync.add_argument("--all", action="store_true", help="every project the source lists")
    sync.add_argument(
        "--with-dependencies",
        action="store_true",
        help="also what the projects' newest releases require (every extra and marker, and the "
        "build backends of sdist-only releases), to a fixed point",
    )
    sync.add_argument(
        "--max-files",
        type=int,
        help="with --with-dependencies: leave out a project only extras lead to whose page lists "
        "more files than this (default: none left out)",
    )
    sync.add_argument(
        "--follow", action="store_true", help="with --all: keep syncing until SIGTERM / SIGINT"
    )
    sync.add_argument(
        "--interval", type=float, default=60.0, help="seconds between --follow syncs (default 60)"
    )
    sync.add_argument("--repo", type=Path, help="meta repository (default: the one run in)")
    sync.add_argument("--source", help="index URL or folder (default: metasrv.toml's source)")
    sync.add_argument("--concurrency", type=int, default=8, help="requests at once (default 8)")
    sync.add_argument("--retries", type=int, default=4, help="retries per request (default 4)")
    sync.add_argument(
        "--timeout", type=float, default=30.0, help="seconds for each whole request (default 30)"
    )
    sync.add_argument("--checkpoint", type=int, default=200, help="commit every N projects")
    sync.add_argument(
        "--probe-metadata",
        action="store_true",
        help="ask for each wheel's <url>.metadata (PEP 658) though its page lists none",
    )
    sync.add_argument(
        "--unconditional",
        action="store_true",
        help="ask for the named projects' pages whole, without their stored ETags",
    )
    sync.set_defaults(handler=_sync)

    show.add_parsers(commands)
    add_parsers(commands)
    builds.add_parsers(commands)
    return parser


def _init(args: argparse.Namespace) -> int:
    path: Path = args.path
    if path.exists() and any(path.iterdir()):
        raise InvalidInput(f"{path} exists and is not empty")
    storage = Storage.init(path)
    files: dict[str, bytes | None] = {
        CONFIG_PATH: tomlcodec.dumps(MetaConfig(source_url=args.source).to_toml()),
    }
    for folder, what in FOLDERS.items():
        files[f"{folder}/README.md"] = FOLDER_README.format(folder=folder, what=what).encode()
    storage.commit(storage.head_branch(), files, "Create meta repository")
    storage.checkout_head()
    print(f"created meta repository {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from metasrv.http import app as http_app
    from metasrv.http.accesslog import print_line
    from metasrv.http.app import ENVIRONMENT_PREFIX, create_app, create_app_from_environment

    if args.fetch_interval <= 0:
        raise InvalidInput("--fetch-interval must be positive")
    if args.git_timeout <= 0:
        raise InvalidInput("--git-timeout must be positive")
    if not 0 <= args.port <= 65535:
        raise InvalidInput(f"--port {args.port} is not a TCP port (0 to 65535)")
    if args.workers < 1:
        raise InvalidInput("--workers must be at least 1")
    if args.header_timeout <= 0 or args.max_connections < 1:
        raise InvalidInput("--header-timeout and --max-connections must be positive")
    storage = open_repository(args.repo)
    if storage.read(storage.resolve(None), CONFIG_PATH) is None:
        # Without it the repository would be served as an empty index, which looks like success.
        raise InvalidInput(
            f"{storage.workdir or storage.path} is not a meta repository (no {CONFIG_PATH}); "
            "create one with 'metasrv init'"
        )
    # Read metasrv.toml here, once: a bad one is one line and exit 2 whatever --workers is, not
    # a traceback in every worker process that uvicorn's supervisor keeps restarting.
    Catalog(storage).config(storage.resolve(None))
    ServerProtocol.configure(args.header_timeout, args.max_connections)
    settings: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": "info",
        "access_log": False,
        "server_header": False,
        "http": ServerProtocol,
    }
    repo_path = storage.workdir or storage.path
    if args.workers == 1:
        app = create_app(
            repo_path,
            mirrors=args.mirrors,
            fetch_interval=args.fetch_interval,
            git_timeout=args.git_timeout,
            offline=args.offline,
            log=None if args.quiet else print_line,
        )
        http_app.settle_collector()
        uvicorn.run(app, **settings)
        return 0
    # Each worker imports the app and builds its own repository handle and caches.
    os.environ[f"{ENVIRONMENT_PREFIX}REPO"] = str(repo_path)
    os.environ[f"{ENVIRONMENT_PREFIX}FETCH_INTERVAL"] = str(args.fetch_interval)
    os.environ[f"{ENVIRONMENT_PREFIX}GIT_TIMEOUT"] = str(args.git_timeout)
    os.environ[f"{ENVIRONMENT_PREFIX}OFFLINE"] = "1" if args.offline else ""
    os.environ[f"{ENVIRONMENT_PREFIX}QUIET"] = "1" if args.quiet else ""
    os.environ[f"{ENVIRONMENT_PREFIX}HEADER_TIMEOUT"] = str(args.header_timeout)
    os.environ[f"{ENVIRONMENT_PREFIX}MAX_CONNECTIONS"] = str(args.max_connections)
    if args.mirrors is not None:
        os.environ[f"{ENVIRONMENT_PREFIX}MIRRORS"] = str(args.mirrors.resolve())
    factory = f"{create_app_from_environment.__module__}:{create_app_from_environment.__name__}"
    uvicorn.run(factory, factory=True, workers=args.workers, **settings)
    return 0


def _sync(args: argparse.Namespace) -> int:
    if bool(args.projects) == args.all:
        raise InvalidInput("name the projects to sync, or pass --all for the whole index")
    if args.follow and not args.all:
        raise InvalidInput("--follow follows the whole index: pass --all")
    if (args.with_dependencies or args.unconditional) and args.all:
        raise InvalidInput("--with-dependencies and --unconditional take named projects, not --all")
    if args.interval <= 0:
        raise InvalidInput("--interval must be positive")
    if args.max_files is not None and not (args.with_dependencies and args.max_files >= 0):
        raise InvalidInput("--max-files is a number of files for --with-dependencies")
    storage = open_repository(args.repo)
    source = args.source or _configured_source(storage)
    options = SyncOptions(
        fetch=FetchOptions(
            concurrency=args.concurrency,
            retries=args.retries,
            timeout_seconds=args.timeout,
            probe_metadata_files=args.probe_metadata,
        ),
        checkpoint=args.checkpoint,
        conditional=not args.unconditional,
    )
    if args.follow:
        return _follow(storage, source, options, args.interval)
    started = time.monotonic()
    terminal = sys.stderr.isatty()

    def progress(done: int, total: int, summary: SyncSummary) -> None:
        rate = done / max(time.monotonic() - started, 1e-9)
        line = (
            f"{done}/{total} projects, {summary.files_added} files added, "
            f"{summary.errors} errors, {rate:.1f} projects/s"
        )
        print(f"\r{line}" if terminal else line, end="" if terminal else "\n", file=sys.stderr)

    if args.all:
        summary = sync_all(storage, source, options, progress)
    elif args.with_dependencies:
        summary = sync_with_dependencies(
            storage, source, args.projects, options, progress, max_files=args.max_files
        )
    else:
        summary = sync(storage, source, args.projects, options, progress)
    if terminal:
        print(file=sys.stderr)
    _print_summary(summary, source)
    builds.start_background_builds(storage)
    return summary.exit_code


def _follow(storage: Storage, source: str, options: SyncOptions, interval: float) -> int:
    """Follow the whole index until SIGTERM or SIGINT, which end it between commits."""

    def report(outcome: SyncSummary | Exception) -> None:
        if isinstance(outcome, Exception):
            print(f"metasrv: sync failed, trying again: {outcome}", file=sys.stderr, flush=True)
        else:
            _print_summary(outcome, source)
            builds.start_background_builds(storage)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signal_number, stop.set)
        await follow(storage, source, options, interval=interval, stop=stop, report=report)

    asyncio.run(run())
    return 0


def _print_summary(summary: SyncSummary, source: str) -> None:
    for skipped in summary.skipped_files:
        print(f"skipped: {skipped}", file=sys.stderr)
    for failure in summary.failed_projects:
        print(f"not synced (kept as it was): {failure}", file=sys.stderr)
    for left_out in summary.left_out:
        print(f"left out: {left_out}", file=sys.stderr)
    print(
        f"synced {summary.projects} projects from {source}: {summary.changed} changed, "
        f"{summary.removed} removed, {summary.releases_added} releases added, "
        f"{summary.files_added} files added, {summary.files_changed} files changed, "
        f"{summary.errors} errors, {len(summary.failed_projects)} projects not synced, "
        f"{len(summary.commits)} commits, {summary.requests} requests",
        flush=True,
    )


def _configured_source(storage: Storage) -> str:
    source_url = Catalog(storage).config(storage.resolve(None)).source_url
    if source_url is None:
        raise InvalidInput(f"no --source given and {CONFIG_PATH} names no source")
    return source_url
