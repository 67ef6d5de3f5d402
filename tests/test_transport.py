"""A source's requests over aiohttp under httpx: errors, proxies, TLS and URLs as httpx's own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from metasrv.errors import SourceError
from metasrv.index.client import Fetched, Fetcher, FetchOptions, make_client
from tests.gitremotes import tls_remote

OPTIONS = FetchOptions(retries=0, timeout_seconds=10)


def get(url: str) -> Fetched:
    async def fetch() -> Fetched:
        fetcher = Fetcher(make_client(OPTIONS), OPTIONS)
        try:
            return await fetcher.get(url)
        finally:
            await fetcher.client.aclose()

    return asyncio.run(asyncio.wait_for(fetch(), 60))


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1; yield the server's base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(60)


class _Echo(BaseHTTPRequestHandler):
    """Answer the path and the headers it was asked with."""

    def do_GET(self) -> None:
        body = "\n".join([self.path, *(f"{k.lower()}: {v}" for k, v in self.headers.items())])
        self.send_response(200)
        self.send_header("content-length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy for http:// URLs that records what each request asked for."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("proxy-authorization")))
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # The client's headers go on to the server; those meant for the proxy stop here.
        passed = {
            name: value
            for name, value in self.headers.items()
            if not name.lower().startswith("proxy-") and name.lower() not in ("host", "connection")
        }
        request = urllib.request.Request(self.path, headers=passed)
        with direct.open(request, timeout=30) as answer:
            body = answer.read()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        self.seen.append((f"CONNECT {self.path}", self.headers.get("proxy-authorization")))
        host, port = self.path.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            ends = [self.connection, upstream]
            pumps = [
                threading.Thread(target=_pump, args=(ends[i], ends[1 - i]), daemon=True)
                for i in (0, 1)
            ]
            for pump in pumps:
                pump.start()
            for pump in pumps:
                pump.join(60)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy bytes one way until either end closes."""
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


def test_a_refused_connection_says_so() -> None:
    with socket.socket() as bound:  # bound and not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(SourceError, match=r"ConnectError: .*after 1 attempts"):
            get(f"http://127.0.0.1:{bound.getsockname()[1]}/simple/")


def test_a_source_that_hangs_up_without_an_answer_says_so() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def hang_up() -> None:
        while True:  # every connection: aiohttp tries an idempotent request on a second one
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            connection.recv(65536)
            connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(SourceError, match="RemoteProtocolError: Server disconnected"):
            get(f"http://127.0.0.1:{listener.getsockname()[1]}/simple/")
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(60)


class _Fine(BaseHTTPRequestHandler):
    """Answer with a reason phrase of its own, or none at /empty."""

    def do_GET(self) -> None:
        self.send_response(200, "" if self.path == "/empty" else "Fine")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_response_says_its_version_and_reason_as_httpx_would() -> None:
    async def fetch(url: str) -> tuple[str, str]:
        async with make_client(OPTIONS) as client:
            response = await client.get(url)
            return response.http_version, response.reason_phrase

    with serving(_Fine) as url:
        assert asyncio.run(asyncio.wait_for(fetch(url), 60)) == ("HTTP/1.1", "Fine")
        assert asyncio.run(asyncio.wait_for(fetch(f"{url}/empty"), 60)) == ("HTTP/1.1", "")


def test_the_path_and_headers_go_as_httpx_wrote_them() -> None:
    with serving(_Echo) as url:
        fetched = get(f"{url}/files/a%2Bb%20c/x.whl?y=%2F")
    path, *headers = fetched.text.splitlines()
    assert path == "/files/a%2Bb%20c/x.whl?y=%2F"  # not re-quoted on the way
    assert "user-agent: metasrv-sync" in headers
    assert "accept-encoding: gzip, deflate" in headers  # only what httpx can decode
    assert fetched.url == f"{url}/files/a%2Bb%20c/x.whl?y=%2F"


def test_a_proxy_from_the_environment_carries_the_requests_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _Proxy.seen = []
    with serving(_Echo) as source, serving(_Proxy) as proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.replace("http://", "http://someone:secret@"))
        fetched = get(f"{source}/simple/alpha/")
    path, *headers = fetched.text.splitlines()
    assert path == "/simple/alpha/"
    assert "user-agent: metasrv-sync" in headers  # the request's own headers go on with them
    credentials = base64.b64encode(b"someone:secret").decode()
    assert _Proxy.seen == [(f"{source}/simple/alpha/", f"Basic {credentials}")]


@pytest.fixture
def https_page(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve a page over HTTPS with a CA of its own; yield its URL and the CA's certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    served = tmp_path / "served.git"
    subprocess.run(["git", "init", "-q", "--bare", str(served)], check=True, timeout=60)
    (served / "page.html").write_text("<html></html>")
    with tls_remote(served, tmp_path / "certificates") as remote:
        yield f"{remote.url}page.html", tmp_path / "certificates" / "ca.pem"


def test_a_source_over_https_is_trusted_as_httpx_would_trust_it(
    https_page: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, ca = https_page
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(SourceError, match=r"ConnectError: .*certificate verify failed"):
        get(url)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    assert get(url).content == b"<html></html>"


@pytest.fixture
def proxied_page(https_page: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> str:
    """Return the HTTPS page's URL, its CA trusted, with no proxy set yet and none seen."""
    url, ca = https_page
    _Proxy.seen = []
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    return url


def test_https_through_a_proxy_tunnels_and_trusts_the_same_certificates(
    proxied_page: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = proxied_page
    with serving(_Proxy) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.replace("http://", "http://someone:secret@"))
        assert get(url).content == b"<html></html>"
    credentials = base64.b64encode(b"someone:secret").decode()
    host = url.split("/")[2]
    assert _Proxy.seen == [(f"CONNECT {host}", f"Basic {credentials}")]


def test_a_plain_http_source_needs_no_certificates_and_https_says_it_cannot_load_them(
    https_page: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = https_page
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such.pem"))
    with serving(_Echo) as source:
        assert get(f"{source}/simple/").text.splitlines()[0] == "/simple/"
    with pytest.raises(SourceError, match=r"TransportError: cannot load the trusted certificates"):
        get(url)

    async def prepared_then_fetched() -> Fetched:
        client = make_client(OPTIONS)
        client.prepare_tls(url)  # says nothing: the https request does
        try:
            return await Fetcher(client, OPTIONS).get(url)
        finally:
            await client.aclose()

    with pytest.raises(SourceError, match=r"TransportError: cannot load the trusted certificates"):
        asyncio.run(asyncio.wait_for(prepared_then_fetched(), 60))


def test_certificates_prepared_for_a_url_serve_its_requests_through_a_proxy(
    proxied_page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = proxied_page

    async def prepared_then_fetched() -> Fetched:
        client = make_client(OPTIONS)
        client.prepare_tls(url)
        # Read no more: the proxy's transport must have loaded them already.
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "gone.pem"))
        try:
            return await Fetcher(client, OPTIONS).get(url)
        finally:
            await client.aclose()

    with serving(_Proxy) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        fetched = asyncio.run(asyncio.wait_for(prepared_then_fetched(), 60))
    assert fetched.content == b"<html></html>"
    assert [seen for seen, _ in _Proxy.seen] == [f"CONNECT {url.split('/')[2]}"]
