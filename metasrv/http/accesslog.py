"""One line per request: method, path, status, milliseconds; so an operator sees what is asked."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from metasrv.http.hotpath import ASGIApp, Message, Receive, Scope, Send


def print_line(line: str) -> None:
    """Print a log line to stderr, beside uvicorn's own."""
    print(line, file=sys.stderr, flush=True)


class AccessLog:
    """An ASGI wrapper that logs each HTTP request once its response has started."""

    def __init__(self, app: ASGIApp, log: Callable[[str], None]) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # what the client sees when the app fails before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.log(access_line(scope, status, started))


def access_line(scope: Scope, status: int, started: float) -> str:
    """Return a request's log line; ``started`` is its ``time.monotonic()`` on arrival."""
    # The path as sent, not percent-decoded: a decoded "%0a" would start a forged line.
    # Escaping what is left keeps one request to one line whatever the server passed.
    raw = scope.get("raw_path") or scope["path"].encode("utf-8")
    if scope.get("query_string"):
        raw += b"?" + scope["query_string"]
    path = raw.decode("latin-1").encode("unicode_escape").decode("ascii")
    elapsed = (time.monotonic() - started) * 1000
    return f"{scope['method']} {path} {status} {elapsed:.1f} ms"
