"""The Starlette application: routes that translate HTTP into read API calls and back."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from metasrv.errors import MetasrvError, NotFound
from metasrv.http.accesslog import AccessLog, print_line
from metasrv.http.compression import Compressor
from metasrv.http.documents import encode
from metasrv.http.fastpath import FastPath, Keeping, Served, ServerProtocol
from metasrv.http.hotpath import ASGIApp, HotPath, etag_matches
from metasrv.http.pulling import PulledReads
from metasrv.http.readapi import Answer, ReadApi
from metasrv.http.simpleroutes import SimpleRoutes
from metasrv.http.views import SimpleApi
from metasrv.http.wheelcache import WheelCache
from metasrv.index.pullthrough import PullThrough
from metasrv.index.sync import SyncOptions, SyncSummary
from metasrv.index.wholeindex import Follower
from metasrv.markers import MarkerSets
from metasrv.repo.catalog import Catalog
from metasrv.repo.locks import try_lock
from metasrv.repo.storage import Storage
from metasrv.understandings.mirrors import Deadlines
from metasrv.understandings.registry import PIN_FETCH_INTERVAL_SECONDS, Understandings

MIME_JSON = "application/json"
# A stopping server lets the follow commit the checkpoint in flight, up to this long.
FOLLOW_STOP_SECONDS = 60.0
FETCH_LOCK = ".fetch.lock"
# How ``serve --workers`` hands its options to worker processes, which uvicorn starts by import.
ENVIRONMENT_PREFIX = "METASRV_SERVE_"
Endpoint = Callable[[Request], Awaitable[Response]]


def _respond(request: Request, answer: Answer, extra: dict[str, str] | None = None) -> Response:
    """Translate an answer into a 200, or a 304 when the client holds it already."""
    headers = {key.decode(): value.decode() for key, value in answer.headers()}
    headers.update(extra or {})
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and etag_matches(if_none_match, headers["etag"]):
        return Response(status_code=304, headers=headers)
    return Response(answer.content(), media_type=MIME_JSON, headers=headers)


async def _metasrv_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MetasrvError)
    return _error_response(exc.http_status, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "unknown path" if exc.status_code == 404 else str(exc.detail)
    return _error_response(exc.status_code, message)


def _error_response(status: int, message: str) -> Response:
    body = encode({"error": message, "status": status})
    return Response(body, status_code=status, media_type=MIME_JSON)


def create_app(
    repo_path: Path | str,
    *,
    mirrors: Path | None = None,
    fetch_interval: float = 10.0,
    git_timeout: float | None = None,
    pin_fetch_interval: float = PIN_FETCH_INTERVAL_SECONDS,
    offline: bool = False,
    log: Callable[[str], None] | None = None,
) -> ASGIApp:
    """Build the application serving the meta repository at ``repo_path``.

    Understandings' repositories are mirrored under ``mirrors`` (default: inside the meta
    repository's git folder) and fetched at start and every ``fetch_interval`` seconds, each
    remote operation within ``git_timeout`` seconds (default: 120). Unless ``offline``,
    projects the data lacks are pulled through from the source (metasrv.toml). ``log`` gets
    one line per request, per pull-through and per failed wheel rewrite.
    """
    storage = Storage(repo_path)
    storage.watch_refs()
    deadlines = Deadlines.within(git_timeout) if git_timeout is not None else Deadlines()
    understandings = Understandings(
        storage, mirrors, deadlines=deadlines, pin_fetch_interval=pin_fetch_interval
    )
    catalog = Catalog(storage)
    pulled = PulledReads(open_pull_through(storage, catalog, offline=offline, log=log))
    follower = open_follower(storage, catalog, log) if pulled.pull is not None else None
    read_api = ReadApi(catalog, understandings, MarkerSets(storage))
    wheels = WheelCache(storage.path / "metasrv-wheels", log=log)
    simple_routes = SimpleRoutes(
        SimpleApi(catalog, understandings, wheels, pending_metadata=pulled.pull is not None),
        read_api.listings,
        pulled,
    )

    async def root(request: Request) -> Response:
        return _respond(request, read_api.root(request.query_params.get("at")))

    async def projects(request: Request) -> Response:
        query = request.query_params
        return _respond(request, await read_api.projects(query.get("at"), query.get("since")))

    async def project(request: Request) -> Response:
        query, name = request.query_params, request.path_params["name"]
        at, understanding = query.get("at"), query.get("understanding")
        cooldown = query.get("cooldown")

        def read() -> Answer:
            if understanding is None and cooldown is None:
                return read_api.project(at, name)
            return read_api.patched_project(at, name, understanding, cooldown)

        return await _pulled_answer(request, pulled, at, name, None, read=read)

    async def release(request: Request) -> Response:
        query = request.query_params
        name, version = request.path_params["name"], request.path_params["version"]
        at, understanding = query.get("at"), query.get("understanding")
        markers, cooldown = query.get("markers"), query.get("cooldown")

        def read() -> Answer:
            if markers is not None:
                return read_api.annotated_release(
                    at, name, version, markers, understanding, cooldown=cooldown
                )
            if understanding is not None or cooldown is not None:
                return read_api.patched_release(at, name, version, understanding, cooldown)
            return read_api.release(at, name, version)

        return await _pulled_answer(request, pulled, at, name, version, read=read)

    async def marker_set_list(request: Request) -> Response:
        return _respond(request, read_api.marker_set_list(request.query_params.get("at")))

    async def marker_set(request: Request) -> Response:
        name = request.path_params["name"]
        return _respond(request, read_api.marker_set(request.query_params.get("at"), name))

    async def evaluate(request: Request) -> Response:
        query, name = request.query_params, request.path_params["name"]
        answer = read_api.evaluate(
            query.get("at"), name, query.get("marker"), query.get("requirement")
        )
        return _respond(request, answer)

    async def understanding_list(request: Request) -> Response:
        await read_api.prepare_all(request.query_params.get("at"))
        return _respond(request, read_api.understanding_list(request.query_params.get("at")))

    async def understanding(request: Request) -> Response:
        query = request.query_params
        name = request.path_params["name"]
        await read_api.prepare(query.get("at"), name)
        return _respond(
            request, read_api.understanding(query.get("at"), name, query.get("project"))
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with (
            _beside_the_server(simple_routes.api, fetch_interval, follower, log),
            _pulling(pulled.pull),
        ):
            yield

    routes = [
        # Installers' requests first: Starlette tries each route's pattern in turn, and the read
        # API's hot reads are answered before the router (hotpath.py).
        *simple_routes.routes(),
        Route("/", root),
        Route("/v1/projects", projects),
        Route("/v1/projects/{name}", _prepared(read_api, project)),
        Route("/v1/projects/{name}/{version}", _prepared(read_api, release)),
        Route("/v1/understandings", understanding_list),
        Route("/v1/understandings/{name}", understanding),
        Route("/v1/markers", marker_set_list),
        Route("/v1/markers/{name}", marker_set),
        Route("/v1/markers/{name}/evaluate", evaluate),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={MetasrvError: _metasrv_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    hot = HotPath(read_api, app, pulled)
    fast = FastPath(hot, log)
    served = Keeping(Compressor(hot), fast)
    return Served(served if log is None else AccessLog(served, log), fast)


def open_pull_through(
    storage: Storage,
    catalog: Catalog,
    *,
    offline: bool = False,
    log: Callable[[str], None] | None = None,
) -> PullThrough | None:
    """Return the pull-through metasrv.toml configures, or None when it is off or offline.

    The data branch it names, if any, is the branch unpinned reads follow, offline too.
    """
    try:
        config = catalog.config(storage.resolve(None))
    except NotFound:
        return None  # a repository without commits has no source to pull from
    storage.data_branch = config.pull_through.branch
    if offline or not config.pull_through.enabled or config.source_url is None:
        return None
    return PullThrough(
        storage.path,
        config.source_url,
        branch=config.pull_through.branch,
        refresh=config.pull_through.refresh,
        log=log,
        build_in_background=config.builds.enabled,
        reader=catalog,
    )


@asynccontextmanager
async def _pulling(pull: PullThrough | None) -> AsyncIterator[None]:
    """Open pull-through's source before the server takes requests; stop its thread as it stops."""
    if pull is not None:
        await pull.warm_up()
    try:
        yield
    finally:
        if pull is not None:
            await asyncio.to_thread(pull.close)


@asynccontextmanager
async def _beside_the_server(
    simple_api: SimpleApi,
    fetch_interval: float,
    follower: Follower | None,
    log: Callable[[str], None] | None,
) -> AsyncIterator[None]:
    """Fetch the understandings' mirrors, prepare the wheels they rewrite, and follow the source
    while the server runs."""
    task = asyncio.create_task(_fetch_mirrors(simple_api, fetch_interval, log))
    if follower is not None:
        follower.start()
    try:
        yield
    finally:
        task.cancel()
        if follower is not None:
            await asyncio.to_thread(follower.stop, FOLLOW_STOP_SECONDS)


def open_follower(
    storage: Storage, catalog: Catalog, log: Callable[[str], None] | None
) -> Follower | None:
    """Return the whole-index follow a pull-through server runs when metasrv.toml says
    ``follow = S``, so that an operator runs one process."""
    config = catalog.config(storage.resolve(None))
    if config.follow is None or config.source_url is None:
        return None

    def report(outcome: SyncSummary | Exception) -> None:
        if log is None:
            return
        if isinstance(outcome, Exception):
            log(f"follow: sync failed, trying again: {outcome}")
        else:
            log(
                f"follow: {outcome.projects} projects synced, {outcome.changed} changed, "
                f"{outcome.removed} removed, {len(outcome.commits)} commits, "
                f"{outcome.requests} requests"
            )

    options = SyncOptions(branch=config.pull_through.branch)
    return Follower(storage.path, config.source_url, options, interval=config.follow, report=report)


async def _pulled_answer(
    request: Request,
    pulled: PulledReads,
    at: str | None,
    name: str,
    version: str | None,
    *,
    read: Callable[[], Answer],
) -> Response:
    """Answer a read, pulling the project through and reading pending metadata as needed."""
    answer, headers = await pulled.answer(at, name, version, read)
    return _respond(request, answer, headers)


def _prepared(read_api: ReadApi, endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint so that the mirrors its ?understanding= needs are refreshed first."""

    async def prepared(request: Request) -> Response:
        understanding = request.query_params.get("understanding")
        if understanding is not None:
            await read_api.prepare(request.query_params.get("at"), understanding)
        return await endpoint(request)

    return prepared


async def _fetch_mirrors(
    simple_api: SimpleApi, interval: float, log: Callable[[str], None] | None
) -> None:
    """Refresh every registered mirror now and then every ``interval`` seconds, off the loop,
    then start preparing the wheels each understanding's new state rewrites.

    The refreshes run in parallel on worker threads; the next round starts when all of this one
    are done or past their deadline, so a hung remote delays no other mirror. Of several workers
    serving one repository only the one holding the fetch lock refreshes periodically; a refresh
    a request needs takes the mirror's own lock (see Mirrors), so processes never fetch at once.
    Rewritten wheels are kept on disk that every worker reads.
    """
    understandings = simple_api.understandings
    understandings.mirrors.folder.mkdir(parents=True, exist_ok=True)
    with open(understandings.mirrors.folder / FETCH_LOCK, "w") as lock_file:
        while True:
            if try_lock(lock_file.fileno()):
                try:
                    jobs = understandings.refresh_all(understandings.meta.resolve(None))
                    if jobs:
                        await asyncio.wait([asyncio.wrap_future(job) for job in jobs])
                except MetasrvError as exc:
                    # No served commit yet, or a broken registration: say why, and try again
                    # next round (the routes report it to clients too).
                    if log is not None:
                        log(f"mirrors: refresh failed, trying again: {exc}")
            await simple_api.prepare_rewrites()
            await asyncio.sleep(interval)


def settle_collector() -> None:
    """Keep what a serving process has made so far out of the garbage collector's passes."""
    # Imports and the app live as long as the process. Left in, a full pass walked them all in
    # the middle of a request: 42 ms of a 4,400-file first page. A larger young generation takes
    # such a page's objects in a few passes, not a hundred (10 ms of collection left, from 56).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def create_app_from_environment() -> ASGIApp:
    """Build the application from ``METASRV_SERVE_*``: how each ``serve --workers`` starts."""
    mirrors = os.environ.get(f"{ENVIRONMENT_PREFIX}MIRRORS")
    ServerProtocol.configure(
        float(os.environ[f"{ENVIRONMENT_PREFIX}HEADER_TIMEOUT"]),
        int(os.environ[f"{ENVIRONMENT_PREFIX}MAX_CONNECTIONS"]),
    )
    app = create_app(
        os.environ[f"{ENVIRONMENT_PREFIX}REPO"],
        mirrors=Path(mirrors) if mirrors else None,
        fetch_interval=float(os.environ[f"{ENVIRONMENT_PREFIX}FETCH_INTERVAL"]),
        git_timeout=float(os.environ[f"{ENVIRONMENT_PREFIX}GIT_TIMEOUT"]),
        offline=bool(os.environ.get(f"{ENVIRONMENT_PREFIX}OFFLINE")),
        log=None if os.environ.get(f"{ENVIRONMENT_PREFIX}QUIET") else print_line,
    )
    settle_collector()
    return app
