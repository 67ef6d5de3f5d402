"""The project and release routes answered without building Starlette request objects.

Warm answers of these two routes cost about a third of the whole request in Starlette's routing
and Request/Response objects (see benchmarks/); this front door answers the successful ones
straight from the ASGI scope. Everything else, every error included, goes on to the route table,
so statuses and error bodies are still decided in one place.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
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
# A page that names no commit (each file linked at the source) is the same at every commit
# holding its project file: its ETag names that file, and a kept copy answers while it is there.
_FILE_ETAG = re.compile(rb'"file-([0-9a-f]{40})-[^"]*"')


@dataclass(frozen=True, slots=True)
class Read:
    """A project read (``version`` None) or a release read, at a ref or unpinned."""

    at: str | None
    name: str
    version: str | None


class HotPath:
    """An ASGI app that answers successful project and release reads, else defers to ``app``."""

    def __init__(self, read_api: ReadApi, app: ASGIApp, pulled: PulledReads | None = None) -> None:
        self.read_api = read_api
        self.app = app
        self.pulled = pulled or PulledReads(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        read = self.read_of(scope) if scope["type"] == "http" else None
        response = None if read is None else self.respond(scope, read)
        if response is None:
            await self.app(scope, receive, send)
            return
        status, headers, content = response
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def respond(
        self, scope: Scope, read: Read
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Return the status, headers and body of ``read`` (the request's), None if it fails."""
        answer = self._answer(read)
        if answer is None:
            return None
        headers = answer.headers()
        if _holds(scope, headers[0][1]):
            return 304, headers, b""
        content = answer.content()
        headers.append(_JSON_HEADER)
        headers.append((b"content-length", str(len(content)).encode()))
        return 200, headers, content

    def read_of(self, scope: Scope) -> Read | None:
        """Return the project or release read an HTTP request asks for, None for another one."""
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
        if len(parts) == 1 and parts[0]:
            return Read(at, parts[0], None)
        if len(parts) == 2 and parts[0] and parts[1]:
            return Read(at, parts[0], parts[1])
        return None

    def answers_from(self, read: Read, commit_id: str, blob_id: str | None = None) -> str | None:
        """Return the commit ``read`` is answered from now if an answer kept from ``commit_id``
        still answers it with nothing to add, else None.

        With ``blob_id``, the answer is the same at every commit holding that project file.
        """
        try:
            served = self.read_api.pin(read.at).commit_id
            if served != commit_id:
                if blob_id is None:
                    return None
                if self.read_api.catalog.project_blob(served, read.name)[1] != blob_id:
                    return None
            return None if self._stale(read) else served
        except MetasrvError:
            return None

    def touch(self, read: Read) -> None:
        """Note an unpinned read for pull-through's background re-check."""
        if self.pulled.active(read.at):
            self.pulled.touch(read.name)

    def _answer(self, read: Read) -> Answer | None:
        try:
            if read.version is None:
                answer = self.read_api.project(read.at, read.name)
            else:
                answer = self.read_api.release(read.at, read.name, read.version)
            # Pending metadata and stale data are answered by the routes, which say so.
            if answer.pending or self._stale(read):
                return None
        except MetasrvError:
            return None
        self.touch(read)
        return answer

    def _stale(self, read: Read) -> bool:
        return bool(self.pulled.headers(read.at, read.name))


def _holds(scope: Scope, etag: bytes) -> bool:
    for key, value in scope["headers"]:
        if key == b"if-none-match":
            return etag_matches(value.decode("latin-1"), etag.decode("latin-1"))
    return False


def file_etag(blob_id: str, content_type: str) -> str:
    """Return the ETag of a page that is the same at each commit holding project file blob_id."""
    return f"file-{blob_id}-{content_type}"


def blob_of_etag(etag: bytes | None) -> str | None:
    """Return the project file a ``file_etag`` (quoted, perhaps with a coding's suffix) names."""
    match = _FILE_ETAG.fullmatch(etag or b"")
    return None if match is None else match.group(1).decode()


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Return whether an If-None-Match header names ``etag`` (weak comparison, RFC 9110)."""
    candidates = [candidate.strip().removeprefix("W/") for candidate in if_none_match.split(",")]
    return "*" in candidates or etag in candidates
