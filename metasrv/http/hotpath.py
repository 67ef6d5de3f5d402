"""The project and release routes answered without building Starlette request objects.

Warm answers of these two routes cost about a third of the whole request in Starlette's routing
and Request/Response objects (see benchmarks/); this front door answers the successful ones
straight from the ASGI scope. Everything else, every error included, goes on to the route table,
so statuses and error bodies are still decided in one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from metasrv.errors import MetasrvError
from metasrv.http.pulling import PulledReads
from metasrv.http.readapi import Answer, ReadApi

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREFIX = "/v1/projects/"
_JSON_HEADER = (b"content-type", b"application/json")


class HotPath:
    """An ASGI app that answers successful project and release reads, else defers to ``app``."""

    def __init__(self, read_api: ReadApi, app: ASGIApp, pulled: PulledReads | None = None) -> None:
        self.read_api = read_api
        self.app = app
        self.pulled = pulled or PulledReads(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._answer(scope) if scope["type"] == "http" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        headers = answer.headers()
        if _holds(scope, headers[0][1]):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        content = answer.content()
        headers.append(_JSON_HEADER)
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _answer(self, scope: Scope) -> Answer | None:
        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith(_PREFIX):
            return None
        at = None
        query_string: bytes = scope["query_string"]
        if query_string:
            query = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
            if len(query) != 1 or query[0][0] != "at":
                return None
            at = query[0][1]
        parts = path[len(_PREFIX) :].split("/")
        try:
            if len(parts) == 1 and parts[0]:
                answer = self.read_api.project(at, parts[0])
            elif len(parts) == 2 and parts[0] and parts[1]:
                answer = self.read_api.release(at, parts[0], parts[1])
            else:
                return None
            # Pending metadata and stale data are answered by the routes, which say so.
            if answer.pending or self.pulled.headers(at, parts[0]):
                return None
        except MetasrvError:
            return None
        if self.pulled.active(at):
            self.pulled.touch(parts[0])
        return answer


def _holds(scope: Scope, etag: bytes) -> bool:
    for key, value in scope["headers"]:
        if key == b"if-none-match":
            return etag_matches(value.decode("latin-1"), etag.decode("latin-1"))
    return False


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Return whether an If-None-Match header names ``etag`` (weak comparison, RFC 9110)."""
    candidates = [candidate.strip().removeprefix("W/") for candidate in if_none_match.split(",")]
    return "*" in candidates or etag in candidates
