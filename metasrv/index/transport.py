"""httpx's client over aiohttp's connections: a source's requests at a third of httpcore's CPU.

Pull-through fetches a page per first request on the server's own GIL, and httpcore's pool spent
~0.85 ms of CPU per request on it (benchmarks/README: pull_through). httpx keeps everything above
the wire (redirects, decoding, cookies, proxies from the environment, timeouts); aiohttp only
moves the bytes, and its errors become httpx's, so callers see one client.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
import yarl
from httpx._types import CertTypes

CHUNK_BYTES = 64 * 1024
DEFAULT_LIMITS = httpx.Limits()


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """Raise aiohttp's errors as the httpx errors that name the same failure."""
    try:
        yield
    except aiohttp.ClientProxyConnectionError as exc:
        raise httpx.ProxyError(str(exc)) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc)) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, unreachable, no such host, TLS
        raise httpx.ConnectError(str(exc)) from exc
    except aiohttp.ServerTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc)) from exc
    except aiohttp.ClientOSError as exc:  # reset by the peer
        raise httpx.ReadError(str(exc)) from exc
    except aiohttp.ClientError as exc:  # disconnected, a cut body, not HTTP, headers too long
        raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from exc


def _proxy_headers(proxy: httpx.Proxy) -> dict[str, str]:
    """Return the headers for the proxy, its credentials as httpcore sends them (RFC 7617)."""
    headers = dict(proxy.headers)
    if proxy.raw_auth is not None:
        credentials = base64.b64encode(b":".join(proxy.raw_auth)).decode()
        headers["Proxy-Authorization"] = f"Basic {credentials}"
    return headers


class _Body(httpx.AsyncByteStream):
    """A response's body as it arrives, still content-encoded: httpx decodes it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                yield chunk

    async def aclose(self) -> None:
        # A body not read to its end closes its connection instead of returning it to the pool.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Send httpx's requests through one aiohttp session, made on the loop that first uses it.

    Without their bodies: a source is only read (GET, HEAD).
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        trust_env: bool = True,
        proxy: httpx.Proxy | None = None,
    ) -> None:
        self._verify, self._trust_env = verify, trust_env
        self._ssl: ssl.SSLContext | None = None
        self._proxy = proxy
        self._proxy_headers = _proxy_headers(proxy) if proxy is not None else None
        self._session: aiohttp.ClientSession | None = None

    def prepare_tls(self) -> None:
        """Load the trusted certificates now; one that cannot be loaded fails https requests."""
        with contextlib.suppress(httpx.TransportError):
            self._ssl_context()

    def _ssl_context(self) -> ssl.SSLContext:
        # The certificates httpx itself would trust: certifi, or SSL_CERT_FILE / SSL_CERT_DIR.
        # Made when prepare_tls asks or at the first https request, not before: loading them
        # takes ~20 ms of the GIL, which a plain-http source (a company index) never needs.
        if self._ssl is None:
            try:
                self._ssl = httpx.create_ssl_context(verify=self._verify, trust_env=self._trust_env)
            except OSError as exc:  # SSL_CERT_FILE names no file, or one with no certificate
                # Not a ConnectError: retrying would not mend this machine's configuration.
                raise httpx.TransportError(f"cannot load the trusted certificates: {exc}") from exc
        return self._ssl

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # No cap of its own: a Fetcher holds at most its concurrency in flight.
                connector=aiohttp.TCPConnector(limit=0),
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies
                auto_decompress=False,  # httpx decodes, counting against the caller's caps
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request; return its response with the body still to be read."""
        if request.url.scheme not in ("http", "https"):  # a redirect to ftp://, as httpcore says
            raise httpx.UnsupportedProtocol(f"unsupported protocol {request.url.scheme + '://'!r}")
        timeout = request.extensions.get("timeout", {})
        headers = request.headers.multi_items()
        proxy, proxy_headers = self._proxy, self._proxy_headers
        proxy_scheme = proxy.url.scheme if proxy is not None else None
        if proxy_headers is not None and request.url.scheme == "http":
            headers += proxy_headers.items()  # sent to the proxy itself; https's go in its CONNECT
        with _as_httpx_errors():
            response = await self._opened().request(
                request.method,
                yarl.URL(str(request.url), encoded=True),  # as httpx wrote it, not re-quoted
                headers=headers,
                allow_redirects=False,  # httpx follows them, with its own checks
                # httpx's per-read timeout: a stalled stream fails before the caller's deadline.
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"), sock_read=timeout.get("read")
                ),
                proxy=str(proxy.url) if proxy is not None else None,
                proxy_headers=proxy_headers,
                ssl=self._ssl_context() if "https" in (request.url.scheme, proxy_scheme) else True,
            )
        reason = (response.reason or "").encode()
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_Body(response),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()


class AiohttpClient(httpx.AsyncClient):
    """An httpx client whose connections, proxied ones included, are aiohttp's."""

    def prepare_tls(self, url: str) -> None:
        """Load the trusted certificates now for requests to ``url``, not at the first one."""
        # The transport that will carry them: a proxy's (HTTPS_PROXY), else the direct one.
        transport = self._transport_for_url(httpx.URL(url))
        if isinstance(transport, AiohttpTransport):
            transport.prepare_tls()

    # httpx's hooks for the transports it makes, called with keywords (httpx 0.27 to 0.29).
    def _init_transport(  # noqa: PLR0917
        self,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> httpx.AsyncBaseTransport:
        return transport or AiohttpTransport(verify=verify, trust_env=trust_env)

    def _init_proxy_transport(  # noqa: PLR0917
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: CertTypes | None = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> httpx.AsyncBaseTransport:
        return AiohttpTransport(verify=verify, trust_env=trust_env, proxy=proxy)
