"""Hot reads answered by the connection: the app's answer, byte for byte, without the app."""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, BinaryIO

import pytest
import uvicorn
import zstandard

from metasrv.http.app import create_app
from metasrv.http.fastpath import Keeping, Served, ServerProtocol
from metasrv.http.hotpath import HotPath, Message, Receive, Scope, Send
from metasrv.index.pages import MIME_SIMPLE_JSON
from metasrv.model import Project, Release
from metasrv.repo.storage import Storage
from tests.builders import commit_projects, make_file, make_project
from tests.conftest import AsgiClient

RELEASE = "/v1/projects/flask/2.0.0"
PROJECT = "/v1/projects/Werkzeug"
BIG = "/v1/projects/big"  # compressed for clients that accept it: over compression.MIN_BYTES
DEADLINE_SECONDS = 30
Response = tuple[int, dict[str, str], bytes]  # status, headers (lowercase names), body


class Counted:
    """The app behind the fast path, counting the HTTP requests that reach it."""

    def __init__(self, app: Served) -> None:
        self.inner = app.app
        self.requests: list[str] = []
        app.app = self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests.append(scope["path"])
        await self.inner(scope, receive, send)


@contextmanager
def serving(app: Served, **settings: Any) -> Iterator[tuple[uvicorn.Server, int]]:
    """Run ``app`` on a real uvicorn with metasrv's protocol, in a thread, on a listening socket."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # connections wait in the backlog until uvicorn accepts: no polling
    # asgi3 said, not guessed from __call__: a mutation run wraps it where uvicorn cannot see.
    config = uvicorn.Config(
        app,
        http=ServerProtocol,
        interface="asgi3",
        log_level="warning",
        server_header=False,
        **settings,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        yield server, listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(DEADLINE_SECONDS)
        listener.close()


class Connection:
    """One client connection whose responses are read in order from one buffer."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_SECONDS)
        self.file: BinaryIO = self.socket.makefile("rb")

    def send(self, *requests: bytes) -> None:
        self.socket.sendall(b"".join(requests))

    def response(self) -> Response:
        """Read one response: its status, its headers (lowercase names) and its body."""
        status = int(self.file.readline().split()[1])
        headers = {}
        while (line := self.file.readline().decode("latin-1").rstrip("\r\n")) != "":
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        return status, headers, self.file.read(int(headers.get("content-length", "0")))

    def close(self) -> None:
        self.file.close()
        self.socket.close()


_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "zstd": zstandard.ZstdDecompressor().decompress,
}


def get(path: str, *headers: str) -> bytes:
    """Return the bytes of an HTTP/1.1 GET of ``path`` with ``headers``."""
    lines = [f"GET {path} HTTP/1.1", "Host: metasrv.test", *headers, "", ""]
    return "\r\n".join(lines).encode()


def _without_date(headers: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key != "date"}


def _read_twice(
    storage: Storage, path: str, headers: tuple[str, ...]
) -> tuple[Counted, Response, Response]:
    """Serve the repository and send one request twice on a connection; return both answers."""
    app = create_app(storage.path)
    assert isinstance(app, Served)
    counted = Counted(app)
    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get(path, *headers), get(path, *headers))
        first, again = connection.response(), connection.response()
        connection.close()
    return counted, first, again


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (RELEASE, ()),
        (PROJECT, ()),
        (PROJECT, ("Accept-Encoding: gzip",)),
        (BIG, ("Accept-Encoding: gzip",)),
        (BIG, ("Accept-Encoding: gzip, deflate, zstd",)),
        (f"{RELEASE}?at=main", ()),
    ],
)
def test_a_hot_read_gets_the_apps_answer_without_reaching_the_app(
    storage: Storage, path: str, headers: tuple[str, ...]
) -> None:
    commit_projects(storage, make_project("Big", [f"1.{minor}" for minor in range(40)]))
    expected = AsgiClient(create_app(storage.path)).get(path, dict(h.split(": ") for h in headers))
    counted, first, again = _read_twice(storage, path, headers)
    assert counted.requests == []
    for status, sent_headers, body in (first, again):
        assert status == 200
        assert _without_date(sent_headers) == _without_date(dict(expected.headers))
        coding = sent_headers.get("content-encoding")
        decoded = _DECODERS[coding](body) if coding else body
        assert decoded == expected.content
        assert coding == ("zstd" if "zstd" in str(headers) else "gzip" if path == BIG else None)
        assert "date" in sent_headers
    assert first[2] == again[2]


def test_a_validated_read_gets_a_304_from_the_connection(storage: Storage) -> None:
    commit_projects(storage, make_project("Big", [f"1.{minor}" for minor in range(40)]))
    app = create_app(storage.path)
    assert isinstance(app, Served)
    counted = Counted(app)
    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get(BIG, "Accept-Encoding: gzip"))
        _, headers, _ = connection.response()
        validating = get(BIG, "Accept-Encoding: gzip", f"If-None-Match: {headers['etag']}")
        connection.send(validating, get(BIG, "Accept-Encoding: gzip"))
        (status, validated, body), again = connection.response(), connection.response()
        connection.close()
    assert headers["etag"].endswith('-gzip"')
    assert (status, validated["etag"], body) == (304, headers["etag"], b"")
    assert again[0] == 200  # a 304 is never kept as the answer to a plain read
    assert gzip.decompress(again[2]).startswith(b'{"at":')
    assert counted.requests == []


def test_other_requests_and_closing_connections_reach_the_app(storage: Storage) -> None:
    app = create_app(storage.path)
    assert isinstance(app, Served)
    counted = Counted(app)
    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get("/simple/flask/"), get("/v1/projects/flask/9.9"))
        page, unknown = connection.response(), connection.response()
        connection.send(get(RELEASE, "Connection: close"))
        closing = connection.response()
        assert connection.file.read() == b""  # and the server closed it
        connection.close()
    assert (page[0], unknown[0], closing[0]) == (200, 404, 200)
    assert counted.requests == ["/simple/flask/", "/v1/projects/flask/9.9", RELEASE]


def test_a_commit_is_answered_from_at_once(storage: Storage) -> None:
    """Kept answers and the kept served commit give way to a commit by another writer."""
    app = create_app(storage.path)
    assert isinstance(app, Served)
    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get(RELEASE))
        _, before, _ = connection.response()
        writer = Storage(storage.path)  # as another process would
        commit_projects(writer, make_project("Flask", {"2.0.0": ["Werkzeug>=3.0"]}))
        connection.send(get(RELEASE), get(f"{RELEASE}?at={before['x-metasrv-at']}"))
        (_, after, body), (_, pinned, old_body) = connection.response(), connection.response()
        connection.close()
    assert after["x-metasrv-at"] == writer.resolve(None) != before["x-metasrv-at"]
    assert b"Werkzeug>=3.0" in body
    assert b"Werkzeug>=3.0" not in old_body
    assert pinned["x-metasrv-at"] == before["x-metasrv-at"]


def test_answers_in_one_read_leave_one_keep_alive_timer(storage: Storage) -> None:
    """Each answer arms keep-alive: one armed before must go, or it closes a busy connection."""
    app = create_app(storage.path)
    assert isinstance(app, Served)
    with serving(app, loop="asyncio") as (server, port):
        connection = Connection(port)
        connection.send(get(RELEASE), get(PROJECT), get(RELEASE))
        for _ in range(3):
            assert connection.response()[0] == 200
        (protocol,) = server.server_state.connections
        assert isinstance(protocol, ServerProtocol)
        loop = protocol.loop

        async def armed() -> int:
            handler = protocol.timeout_keep_alive_handler
            timers = loop._scheduled  # type: ignore[attr-defined]
            return sum(1 for t in timers if not t.cancelled() and t._callback == handler)

        assert asyncio.run_coroutine_threadsafe(armed(), loop).result(DEADLINE_SECONDS) == 1
        connection.close()


def _scope(path: str, *headers: tuple[bytes, bytes]) -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": b"",
        "headers": list(headers),
    }


def test_a_kept_answer_is_sent_while_its_commit_is_served(storage: Storage) -> None:
    app = create_app(storage.path)
    assert isinstance(app, Served)
    fast, date = app.fast, [(b"date", b"today")]
    first = fast.response(_scope(RELEASE, (b"host", b"metasrv.test")), date)
    assert first is not None
    key = (RELEASE, b"", None)
    commit_id, _, tail = (fast.kept.get(key) or b"").partition(b"\n")
    assert commit_id.decode() == storage.resolve(None)
    assert first == b"HTTP/1.1 200 OK\r\ndate: today\r\n" + tail
    fast.kept.put(key, commit_id + b"\nkept\r\n\r\n")  # what only the kept entry says
    assert fast.response(_scope(RELEASE, (b"host", b"x")), []) == b"HTTP/1.1 200 OK\r\nkept\r\n\r\n"
    assert fast.response(_scope(PROJECT), []) != b"HTTP/1.1 200 OK\r\nkept\r\n\r\n"
    fast.kept.put(key, b"0" * 40 + b"\nkept\r\n\r\n")  # another commit's: not sent
    assert fast.response(_scope(RELEASE), []) == first.replace(b"date: today\r\n", b"")


def test_the_fast_path_logs_each_answer_and_falls_back_to_the_app_when_it_fails(
    storage: Storage,
) -> None:
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if len(lines) == 1:
            raise RuntimeError("the first line cannot be written")

    app = create_app(storage.path, log=log)
    assert isinstance(app, Served)
    counted = Counted(app)
    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get(RELEASE), get(PROJECT))
        first, second = connection.response(), connection.response()
        connection.close()
    assert (first[0], second[0]) == (200, 200)
    assert counted.requests == [RELEASE]  # the failed fast answer went to the app
    # The app logs the first read after the second is answered: uvicorn starts the next one
    # as the first one's body is sent.
    assert sorted(line.split(" ")[:3] for line in lines) == [
        ["GET", PROJECT, "200"],
        ["GET", RELEASE, "200"],
        ["GET", RELEASE, "200"],
    ]
    assert all(line.endswith(" ms") for line in lines)


def test_a_plain_asgi_app_is_served_by_the_protocol_as_by_uvicorns(storage: Storage) -> None:
    async def plain(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})

    with serving(plain) as (_, port):  # type: ignore[arg-type]
        connection = Connection(port)
        connection.send(get(RELEASE))
        assert connection.response()[::2] == (200, b"ok")
        connection.close()


def _with_metadata_files(name: str, versions: list[str]) -> Project:
    """Return a project whose wheels the source serves PEP 658 files for."""
    releases = []
    for version in versions:
        wheel = make_file(f"{name.lower()}-{version}-py3-none-any.whl")
        with_file = replace(wheel, core_metadata_sha256="ab" * 32)
        releases.append(Release.from_files(version, (with_file,)))
    return Project.create(name, releases)


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/simple/served/", ()),
        ("/simple/served/", (f"Accept: {MIME_SIMPLE_JSON}",)),
        ("/simple/served/", (f"Accept: {MIME_SIMPLE_JSON}", "Accept-Encoding: gzip, zstd")),
        ("/files/served/served-1.0-py3-none-any.whl.metadata", ()),
        ("/at/main/simple/served/", ()),
    ],
)
def test_an_installers_second_read_is_the_apps_first_answer_sent_without_the_app(
    storage: Storage, path: str, headers: tuple[str, ...]
) -> None:
    many = [f"1.{minor}" for minor in range(40)]  # a page over compression.MIN_BYTES
    commit_projects(storage, _with_metadata_files("Served", many))
    counted, first, again = _read_twice(storage, path, headers)
    assert counted.requests == [path]
    assert _without_date(first[1]) == _without_date(again[1])
    assert first[::2] == again[::2]
    assert again[1]["x-metasrv-at"] == storage.resolve(None)
    assert "date" in again[1]
    if path.endswith(".metadata"):
        assert first[0] == 302
        assert again[1]["location"] == "https://files.test/served-1.0-py3-none-any.whl.metadata"
    else:
        assert first[0] == 200
        assert again[1].get("content-encoding") == ("zstd" if "zstd" in str(headers) else None)


def test_a_kept_simple_answer_gives_way_to_a_commit_a_validator_and_other_views(
    storage: Storage,
) -> None:
    app = create_app(storage.path)
    assert isinstance(app, Served)
    counted = Counted(app)
    page, json_page = "/simple/flask/", (f"Accept: {MIME_SIMPLE_JSON}",)
    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get(page), get(page, *json_page), get(page))
        html, json_answer, kept = (connection.response() for _ in range(3))
        validating = get(page, f"If-None-Match: {html[1]['etag']}")
        connection.send(validating)
        validated = connection.response()
        commit_projects(Storage(storage.path), make_project("Flask", ["2.0.0", "3.0.0"]))
        others = ["/cooldown/7d/simple/flask/", f"{page}?format=text/html"]
        connection.send(get(page), *(get(other) for other in others))
        after, cooled, formatted = (connection.response() for _ in range(3))
        connection.close()
    assert html[1]["content-type"].startswith("text/html")
    assert json_answer[1]["content-type"] == MIME_SIMPLE_JSON
    assert counted.requests == [page, page, page, page, *(other.split("?")[0] for other in others)]
    assert kept[::2] == html[::2]  # the third read, kept
    assert _without_date(kept[1]) == _without_date(html[1])
    assert validated[0] == 304
    assert b"3.0.0" in after[2]
    assert b"3.0.0" not in html[2]
    assert after[1]["x-metasrv-at"] == Storage(storage.path).resolve(None)
    assert (cooled[0], formatted[0]) == (200, 200)


def test_an_answer_sent_in_pieces_is_kept_whole_once_its_last_piece_is_sent(
    storage: Storage,
) -> None:
    app = create_app(storage.path)
    assert isinstance(app, Served)
    at = storage.resolve(None).encode()
    page = "/simple/flask/"
    received: list[Message] = []

    async def in_pieces(scope: Scope, receive: Receive, send: Send) -> None:
        received.append(await receive())
        headers = [(b"x-metasrv-at", at), (b"Content-Length", b"4")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "more_body": True})  # "body" may be left out
        await send({"type": "http.response.body", "body": b"cd"})

    kept_as_sent: list[bool] = []

    async def send(message: Message) -> None:
        kept_as_sent.append(app.fast.response(_scope(page), []) is not None)

    asyncio.run(Keeping(in_pieces, app.fast)(_scope(page), _no_body, send))
    assert received == [{"type": "http.request", "body": b"", "more_body": False}]
    assert kept_as_sent == [False, False, False, True]  # kept once whole, not before
    assert app.fast.response(_scope(page), []) == (
        b"HTTP/1.1 200 OK\r\nx-metasrv-at: " + at + b"\r\ncontent-length: 4\r\n\r\nabcd"
    )


def test_an_answer_without_headers_passes_through_and_is_not_kept(storage: Storage) -> None:
    app = create_app(storage.path)
    assert isinstance(app, Served)
    sent: list[Message] = []

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200})  # "headers" may be left out
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(Keeping(bare, app.fast)(_scope("/simple/flask/"), _no_body, send))
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert app.fast.response(_scope("/simple/flask/"), []) is None


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_only_answers_that_say_their_commit_and_found_something_are_kept(
    storage: Storage,
) -> None:
    app = create_app(storage.path)
    assert isinstance(app, Served)
    at = (b"x-metasrv-at", storage.resolve(None).encode())
    page = _scope("/simple/flask/")
    app.fast.keep(page, 404, [at], b"no such project")
    app.fast.keep(page, 200, [], b"which commit?")
    assert app.fast.response(page, []) is None
    app.fast.keep(page, 302, [at, (b"location", b"https://files.test/x")], b"")
    assert app.fast.response(page, []) == (
        b"HTTP/1.1 302 Found\r\nx-metasrv-at: " + at[1] + b"\r\n"
        b"location: https://files.test/x\r\ncontent-length: 0\r\n\r\n"
    )


def test_a_kept_pinned_answer_is_sent_after_the_head_moves_and_logged(storage: Storage) -> None:
    lines: list[str] = []
    app = create_app(storage.path, log=lines.append)
    assert isinstance(app, Served)
    old = storage.resolve(None)
    pinned = _scope(f"/at/{old}/simple/flask/")
    app.fast.keep(pinned, 200, [(b"x-metasrv-at", old.encode())], b"the old page")
    commit_projects(storage, make_project("Flask", ["2.0.0", "3.0.0"]))
    assert storage.resolve(None) != old
    assert app.fast.response(pinned, []) == (
        b"HTTP/1.1 200 OK\r\nx-metasrv-at: " + old.encode() + b"\r\n"
        b"content-length: 12\r\n\r\nthe old page"
    )
    assert [line.split(" ")[:3] for line in lines] == [["GET", pinned["path"], "200"]]
    # Unkept, the same read is the app's: no answer, no line.
    assert app.fast.response(_scope("/simple/werkzeug/"), []) is None
    assert len(lines) == 1


@contextmanager
def _served_to_one_connection(storage: Storage) -> Iterator[tuple[Counted, Connection]]:
    """Serve the repository on a real uvicorn; yield its app's request count and a connection."""
    app = create_app(storage.path)
    assert isinstance(app, Served)
    counted = Counted(app)
    with serving(app) as (_, port):
        connection = Connection(port)
        try:
            yield counted, connection
        finally:
            connection.close()


@pytest.mark.parametrize("headers", [(), (f"Accept: {MIME_SIMPLE_JSON}", "Accept-Encoding: zstd")])
def test_a_kept_page_naming_no_commit_answers_commits_that_keep_its_project_file(
    storage: Storage, headers: tuple[str, ...]
) -> None:
    # Every file is linked at the source: the page is the same at each commit that holds the
    # same project file, so a commit of another project neither renders it again nor changes
    # its ETag (installers revalidating get their 304).
    many = [f"1.{minor}" for minor in range(40)]  # compressed where the client accepts it
    commit_projects(storage, _with_metadata_files("Served", many))
    page = "/simple/served/"
    with _served_to_one_connection(storage) as (counted, connection):
        connection.send(get(page, *headers))
        first = connection.response()
        commit_projects(Storage(storage.path), make_project("Werkzeug", ["3.0.0"]))
        head = Storage(storage.path).resolve(None)
        validating = f"If-None-Match: {first[1]['etag']}"
        connection.send(get(page, *headers), get(page, *headers, validating))
        kept, validated = connection.response(), connection.response()
        commit_projects(Storage(storage.path), _with_metadata_files("Served", ["3.0.0"]))
        connection.send(get(page, *headers))
        changed = connection.response()
    assert first[1]["etag"].startswith('"file-')
    assert first[1].get("content-encoding") == ("zstd" if headers else None)
    assert counted.requests == [page, page, page]  # the kept read did not reach the app
    assert kept[2] == first[2]
    assert kept[1]["x-metasrv-at"] == head != first[1]["x-metasrv-at"]
    assert kept[1]["etag"] == first[1]["etag"]
    assert (validated[0], validated[1]["x-metasrv-at"]) == (304, head)
    assert changed[0] == 200
    assert changed[1]["etag"] != first[1]["etag"]


def test_a_page_linking_a_file_here_is_a_new_page_at_each_commit(storage: Storage) -> None:
    stored = replace(
        make_file("served-1.0-py3-none-any.whl"),
        core_metadata_sha256="ab" * 32,
        core_metadata_stored=True,  # its .metadata is served from this repository, pinned
    )
    commit_projects(storage, Project.create("Served", [Release.from_files("1.0", (stored,))]))
    page = "/simple/served/"
    with _served_to_one_connection(storage) as (counted, connection):
        connection.send(get(page), get(page))
        first, kept = connection.response(), connection.response()
        commit_projects(Storage(storage.path), make_project("Werkzeug", ["3.0.0"]))
        head = Storage(storage.path).resolve(None)
        connection.send(get(page))
        after = connection.response()
    assert counted.requests == [page, page]
    assert kept[::2] == first[::2]
    assert f"/at/{head}/files/served/".encode() in after[2]
    assert after[1]["etag"] != first[1]["etag"]


def test_a_read_that_succeeds_is_answered_before_the_route_table_one_that_fails_by_it(
    storage: Storage,
) -> None:
    app: Any = create_app(storage.path)
    hot = app
    while not isinstance(hot, HotPath):  # through the wrappers the server puts in front
        hot = hot.app
    routes: list[str] = []
    table = hot.app

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        routes.append(scope.get("path", scope["type"]))
        await table(scope, receive, send)

    hot.app = counted
    client = AsgiClient(app)
    assert [client.get(path).status_code for path in (RELEASE, PROJECT)] == [200, 200]
    assert client.get("/v1/projects/nope").status_code == 404
    # The server's start and stop (ASGI lifespan) pass through to the app too.
    steps: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    said: list[str] = []

    async def receive() -> Message:
        return steps.pop(0)

    async def send(message: Message) -> None:
        said.append(message["type"])

    asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    assert routes == ["/v1/projects/nope", "lifespan"]
    assert said == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
