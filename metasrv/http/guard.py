"""Connection guards uvicorn lacks: a deadline for a request's headers, a cap on connections.

uvicorn (0.54) arms its only timer, keep-alive, after a response; a connection that sends part
of a request, or nothing at all, is held forever (300 such held 300 descriptors; 1,100 used up a
1,024-descriptor limit). Its ``limit_concurrency`` answers 503 only to a request that arrives,
so idle connections still pile up. This protocol, uvicorn's own httptools one, closes a
connection whose request headers are not complete ``header_timeout`` seconds after it opened or
after its last response, and closes at once a connection beyond ``max_connections``.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
# Below the usual 1,024 descriptors per process, leaving room for repositories and mirrors.
DEFAULT_MAX_CONNECTIONS = 512


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a connection cap."""

    header_timeout = DEFAULT_HEADER_TIMEOUT_SECONDS
    max_connections = DEFAULT_MAX_CONNECTIONS
    _header_timer: asyncio.TimerHandle | None = None
    _waiting_since: object = None
    _deadline = 0.0

    @classmethod
    def configure(cls, header_timeout: float, max_connections: int) -> None:
        """Set the deadline and the cap for every connection of this process."""
        cls.header_timeout, cls.max_connections = header_timeout, max_connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept a connection, or close it at once beyond the cap."""
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._arm()

    def on_response_complete(self) -> None:
        """Give the next request on this connection its own header deadline."""
        self._arm()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline with the connection."""
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        # A new request's complete headers replace ``cycle``; until then, the deadline runs.
        self._waiting_since = self.cycle
        self._deadline = self.loop.time() + self.header_timeout
        # One timer per connection, moved on only when it fires: a timer made and cancelled per
        # response was a few percent of a kept answer's CPU.
        if self._header_timer is None:
            self._header_timer = self.loop.call_at(self._deadline, self._expire, self._deadline)

    def _expire(self, deadline: float) -> None:
        self._header_timer = None
        if deadline != self._deadline:  # a response since: its own deadline runs
            self._header_timer = self.loop.call_at(self._deadline, self._expire, self._deadline)
            return
        idle = self.cycle is None or self.cycle.response_complete
        if self.cycle is self._waiting_since and idle and not self.transport.is_closing():
            self.transport.close()
