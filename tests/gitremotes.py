"""Git remotes on 127.0.0.1 that misbehave: one that never answers, one that answers slowly,
one that answers every request alike (401, a redirect); and one behind TLS of its own CA."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass
class HungRemote:
    """A URL on a server that accepts connections and never answers, and what it holds."""

    url: str
    held: list[socket.socket] = field(default_factory=list)


@contextmanager
def hung_remote() -> Iterator[HungRemote]:
    """Accept connections and never answer; yield an http URL of a repository on it."""
    listener = socket.create_server(("127.0.0.1", 0))
    remote = HungRemote(f"http://127.0.0.1:{listener.getsockname()[1]}/rules.git")
    held = remote.held
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(connection)  # kept open, never read from or written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield remote
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the hung remote's accept loop did not stop"
        for connection in held:
            connection.close()
        listener.close()


@dataclass
class SlowRemote:
    """A repository served over git's dumb HTTP protocol, each response delayed."""

    url: str
    git_dir: Path
    requests: list[str] = field(default_factory=list)

    def publish(self) -> None:
        """Write the files a dumb-protocol client reads (after every commit)."""
        subprocess.run(
            ["git", "--git-dir", str(self.git_dir), "update-server-info"], check=True, timeout=30
        )

    def count(self, path_suffix: str) -> int:
        """Return how many requests asked for a path ending in ``path_suffix``."""
        return sum(1 for path in self.requests if path.split("?")[0].endswith(path_suffix))


class _SlowHandler(SimpleHTTPRequestHandler):
    remote: SlowRemote
    delay: float

    def do_GET(self) -> None:
        self.remote.requests.append(self.path)
        time.sleep(self.delay)  # the fault under test: a remote that answers slowly
        # A proxy's request names the whole URL: it is answered as if this were that host.
        self.path = urlsplit(self.path)._replace(scheme="", netloc="").geturl()
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def slow_remote(git_dir: Path, delay: float) -> Iterator[SlowRemote]:
    """Serve ``git_dir`` read-only over dumb HTTP on 127.0.0.1, ``delay`` seconds a response.

    It answers as an HTTP proxy too: a request for any host's URL gets ``git_dir``'s file.
    """
    remote = SlowRemote("", git_dir)
    handler = type("Handler", (_SlowHandler,), {"remote": remote, "delay": delay})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(git_dir)))
    remote.url = f"http://127.0.0.1:{server.server_address[1]}/"
    remote.publish()
    with _serving(server, "slow"):
        yield remote


@contextmanager
def tls_remote(git_dir: Path, certificates: Path) -> Iterator[SlowRemote]:
    """Serve ``git_dir`` over dumb HTTPS with a certificate for 127.0.0.1 of its own CA.

    The CA's certificate is written to ``certificates / "ca.pem"``; nothing else trusts it.
    """
    certificates.mkdir(parents=True, exist_ok=True)
    key, cert = certificates / "key.pem", certificates / "ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
         "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    remote = SlowRemote("", git_dir)
    handler = type("Handler", (_SlowHandler,), {"remote": remote, "delay": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(git_dir)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    remote.url = f"https://127.0.0.1:{server.server_address[1]}/"
    remote.publish()
    with _serving(server, "tls"):
        yield remote


@dataclass
class FixedRemote:
    """A URL on a server that gives every request the same answer, and the requests it got."""

    url: str
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # path, Authorization
    headers: list[dict[str, str]] = field(default_factory=list)  # each request's, in order


class _FixedHandler(BaseHTTPRequestHandler):
    remote: FixedRemote
    status: int
    headers_sent: dict[str, str]

    def do_GET(self) -> None:
        self.remote.requests.append((self.path, self.headers.get("Authorization")))
        self.remote.headers.append(dict(self.headers.items()))
        self.send_response(self.status)
        for name, value in {**self.headers_sent, "Content-Length": "0"}.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def fixed_remote(status: int, headers: dict[str, str]) -> Iterator[FixedRemote]:
    """Answer every GET with ``status`` and ``headers``; yield an http URL of a repository on it."""
    remote = FixedRemote("")
    handler = type(
        "Handler", (_FixedHandler,), {"remote": remote, "status": status, "headers_sent": headers}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    remote.url = f"http://127.0.0.1:{server.server_address[1]}/rules.git"
    with _serving(server, "fixed"):
        yield remote


@contextmanager
def _serving(server: ThreadingHTTPServer, what: str) -> Iterator[None]:
    """Serve on a thread for the block; fail loudly if the server does not stop."""
    # Polled often: shutdown() waits one poll, which would otherwise be half a second per test.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        assert not thread.is_alive(), f"the {what} remote did not stop"
