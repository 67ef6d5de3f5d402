"""Hot reads answered by the connection itself: one write, no ASGI task, no ASGI messages.

At PyPI scale the warm release and project reads are the bulk of the traffic. Through ASGI each
costs a task, a dozen message dicts and two socket writes (uvicorn writes head and body apart):
a warm release read took ~100 us of CPU where uvicorn answers a constant through ASGI in ~37
(benchmarks/). The protocol here asks for a whole answer as the request's headers complete and
writes head and body at once. The answer is the one the ASGI app gives (``HotPath.respond``,
then ``compression.encoded``, then the access log line), kept per URL and coding with the commit
it came from; anything else, or an answer worth keeping compressed, goes on to the app.

Installers read the simple API instead: a project's page, then a ``.metadata`` file per
candidate (mostly a redirect to the source's). Those of the plain view are answered by the app
once, kept whole as it sent them (``Keeping``), and sent again while their commit is served; a
page naming no commit (its ETag names its project file) while the served commit holds that file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import cast

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from metasrv.http.accesslog import access_line
from metasrv.http.bytecache import ByteCache
from metasrv.http.compression import Header, encoded, request_coding, validated_scope
from metasrv.http.guard import GuardedHttpToolsProtocol
from metasrv.http.hotpath import (
    ASGIApp,
    HotPath,
    Message,
    Read,
    Receive,
    Scope,
    Send,
    blob_of_etag,
)
from metasrv.http.pulling import STALE_HEADER

# Whole answers cost ~1.8 KB each with their key (a release's): 48 MB keeps ~27,000. Too few for
# a working set and LRU keeps nothing of a cyclic one: 32 MB held 18,000 and a wrk run over
# 20,000 releases missed every time (benchmarks/whole_index: 4,800 req/s, not ~20,000).
CACHE_BYTES = 48 * 1024 * 1024
_STATUS_LINES = {
    status: f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
    for status in (200, 302, 304)
}
# Project pages and .metadata files of the view without understandings, at the served head or
# pinned: the answer depends on the commit (a page naming none: on its project file), the
# request's Accept and Accept-Encoding, and nothing else. Other views go to the app.
_KEPT_SIMPLE = re.compile(r"(?:/at/([^/]+))?/(?:simple/([^/]+)/|files/([^/]+)/[^/]+\.metadata)")
_KEPT_STATUSES = frozenset({200, 302})
_SENT_BY_US = frozenset({b"content-length", b"transfer-encoding"})
# Stated when a kept answer is sent: a page kept by its project file answers later commits too.
_STATED_WHEN_SENT = _SENT_BY_US | {b"x-metasrv-at"}
_STALE = STALE_HEADER.encode()


class FastPath:
    """Whole HTTP/1.1 responses to the hot path's reads, or None for what the app answers."""

    def __init__(
        self, hot: HotPath, log: Callable[[str], None] | None, cache_bytes: int = CACHE_BYTES
    ) -> None:
        self.hot = hot
        self.log = log
        # What follows the status line and the Date, by URL and coding; each says its commit.
        self.kept = ByteCache(cache_bytes)

    def response(self, scope: Scope, default_headers: list[Header]) -> bytes | None:
        """Return the bytes that answer ``scope``, head and body, or None to ask the app."""
        started = time.monotonic()
        read = self.hot.read_of(scope)
        if read is None:
            return self._kept_simple(scope, default_headers, started)
        coding = request_coding(scope)
        key = (scope["path"], scope["query_string"], coding)
        kept = None if _validating(scope) else self.kept.get(key)
        commit_id, _, tail = (kept or b"").partition(b"\n")
        if kept is not None and self.hot.answers_from(read, commit_id.decode()):
            self.hot.touch(read)
            status = 200
        else:
            answer = self.hot.respond(validated_scope(scope, coding), read)
            if answer is None:
                return None
            status, headers, body = answer
            sent = encoded(status, headers, body, coding)
            if sent is None:
                # Worth keeping compressed: the app's Compressor keeps it, in a cache of its own.
                return None
            headers, body = sent
            tail = b"".join([*(b"%s: %s\r\n" % header for header in headers), b"\r\n", body])
            if status == 200:
                self.kept.put(key, dict(headers)[b"x-metasrv-at"] + b"\n" + tail)
        return self._sent(scope, status, default_headers, tail, started)

    def keep(self, scope: Scope, status: int, headers: list[Header], body: bytes) -> None:
        """Keep the app's whole answer to a plain simple read, if it says its commit."""
        sent = dict(headers)
        commit_id = sent.get(b"x-metasrv-at")
        if status not in _KEPT_STATUSES or commit_id is None or _STALE in sent:
            return
        kept = [header for header in headers if header[0].lower() not in _STATED_WHEN_SENT]
        kept.append((b"content-length", str(len(body)).encode()))
        tail = b"".join([*(b"%s: %s\r\n" % header for header in kept), b"\r\n", body])
        blob_id = (blob_of_etag(sent.get(b"etag")) or "").encode()
        self.kept.put(_simple_key(scope), b"%s\n%d\n%s\n%s" % (commit_id, status, blob_id, tail))

    def _kept_simple(
        self, scope: Scope, default_headers: list[Header], started: float
    ) -> bytes | None:
        read = kept_read(scope)
        kept = None if read is None or _validating(scope) else self.kept.get(_simple_key(scope))
        if read is None or kept is None:
            return None
        commit_id, status, blob_id, tail = kept.split(b"\n", 3)
        served = self.hot.answers_from(read, commit_id.decode(), blob_id.decode() or None)
        if served is None:
            return None
        self.hot.touch(read)
        tail = b"x-metasrv-at: %s\r\n%s" % (served.encode(), tail)
        return self._sent(scope, int(status), default_headers, tail, started)

    def _sent(
        self, scope: Scope, status: int, default_headers: list[Header], tail: bytes, started: float
    ) -> bytes:
        lines = [_STATUS_LINES[status], *(b"%s: %s\r\n" % header for header in default_headers)]
        if self.log is not None:
            self.log(access_line(scope, status, started))
        return b"".join([*lines, tail])


def kept_read(scope: Scope) -> Read | None:
    """Return the project read of a simple request whose whole answer may be kept, else None."""
    if scope["method"] != "GET" or scope["query_string"]:
        return None
    match = _KEPT_SIMPLE.fullmatch(scope["path"])
    if match is None:
        return None
    at, page, files = match.groups()
    return Read(at, page or files, None)


def _simple_key(scope: Scope) -> tuple[object, ...]:
    accept = next((value for name, value in scope["headers"] if name == b"accept"), b"")
    return (scope.get("root_path", ""), scope["path"], accept, request_coding(scope))


def _validating(scope: Scope) -> bool:
    return any(name == b"if-none-match" for name, _ in scope["headers"])


class Keeping:
    """An ASGI wrapper that hands the app's answers to plain simple reads to the fast path."""

    def __init__(self, app: ASGIApp, fast: FastPath) -> None:
        self.app = app
        self.fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or kept_read(scope) is None or _validating(scope):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    headers = list(start.get("headers", []))
                    self.fast.keep(scope, start["status"], headers, b"".join(chunks))
            await send(message)

        await self.app(scope, receive, keep)


class Served:
    """The server's ASGI app, carrying the fast path its connections answer hot reads with."""

    def __init__(self, app: ASGIApp, fast: FastPath) -> None:
        self.app = app
        self.fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # No mutants: mutmut's wrapper takes any arguments, and uvicorn then calls it as a factory.
        await self.app(scope, receive, send)  # pragma: no mutate


class ServerProtocol(GuardedHttpToolsProtocol):
    """The guarded httptools protocol, answering hot reads itself when the app is ``Served``."""

    _fast: FastPath | None = None
    _looked_up = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGIApp) -> None:  # type: ignore[override]
        fast = self._fast_path(app)
        # Closing answers (HTTP/1.0, "Connection: close") and their edge cases stay uvicorn's.
        if fast is not None and cycle.keep_alive and not self.transport.is_closing():
            try:
                response = fast.response(
                    cast(Scope, cycle.scope), self.server_state.default_headers
                )
            except Exception:  # the app answers it again: a 500, logged with its traceback
                response = None
            if response is not None:
                cycle.response_started = cycle.response_complete = True
                self.transport.write(response)
                self.on_response_complete()
                return
        super()._start_asgi_task(cycle, app)  # type: ignore[arg-type]

    def _fast_path(self, app: object) -> FastPath | None:
        if not self._looked_up:
            # uvicorn wraps the app (proxy headers, its message logger): look through the wrappers.
            while app is not None and not isinstance(app, Served):
                app = getattr(app, "app", None)
            self._fast = app.fast if isinstance(app, Served) else None
            self._looked_up = True
        return self._fast
