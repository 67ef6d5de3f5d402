"""Connections that send no request in time are closed; connections beyond the cap too."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from urllib.parse import urlsplit

import httpx

from metasrv.repo.storage import Storage
from tests.conftest import running_server

DEADLINE_SECONDS = 30


def _connect(url: str) -> socket.socket:
    address = urlsplit(url)
    assert address.hostname is not None
    assert address.port is not None
    connection = socket.create_connection((address.hostname, address.port), timeout=10)
    connection.settimeout(DEADLINE_SECONDS)
    return connection


def _closed_by_server(connection: socket.socket) -> bool:
    """Read until the server closes (True) or the deadline passes (False)."""
    try:
        while True:
            if not connection.recv(4096):
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _sockets(stack: ExitStack, url: str, count: int) -> Iterator[socket.socket]:
    for _ in range(count):
        yield stack.enter_context(_connect(url))


def test_a_connection_that_never_finishes_its_headers_is_closed(storage: Storage) -> None:
    arguments = ["--repo", str(storage.path), "--header-timeout", "1"]
    with running_server(arguments) as server:
        with _connect(server.url) as silent, _connect(server.url) as partial:
            partial.sendall(
                b"GET / HTTP/1.1\r\nHost: metasrv.test\r\n"
            )  # no blank line: never ends
            assert _closed_by_server(silent)
            assert _closed_by_server(partial)
        with _connect(server.url) as keep_alive:
            keep_alive.sendall(b"GET / HTTP/1.1\r\nHost: metasrv.test\r\n\r\n")
            assert keep_alive.recv(12) == b"HTTP/1.1 200"
            # Half a second request: the deadline counts again from the response (uvicorn's
            # own keep-alive timer stops once bytes arrive).
            keep_alive.sendall(b"GET / HTTP/1.1\r\nHost: metasrv.test\r\n")
            assert _closed_by_server(keep_alive)
        assert httpx.get(f"{server.url}/", timeout=DEADLINE_SECONDS).status_code == 200


def test_connections_beyond_the_cap_are_closed_at_once(storage: Storage) -> None:
    arguments = ["--repo", str(storage.path), "--max-connections", "3", "--header-timeout", "60"]
    with running_server(arguments) as server, ExitStack() as stack:
        held = list(_sockets(stack, server.url, 3))
        extra = stack.enter_context(_connect(server.url))
        # The header deadline (60 s) is far off: only the cap can close this one.
        assert _closed_by_server(extra)
        for connection in held:
            connection.close()
        # The server notices the closes asynchronously: retry until a slot is free.
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            try:
                assert httpx.get(f"{server.url}/", timeout=DEADLINE_SECONDS).status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "no connection slot came free"
