"""zstd or gzip for JSON and simple pages when the client accepts it, compressed once per ETag.

uv asks for ``gzip, deflate, zstd`` and pip for ``gzip, deflate``; numpy's page is 2.4 MB raw
and a root at PyPI scale ~40 MB, so bodies are compressed once and kept by their ETag. zstd goes
to clients that name it: it compresses these pages smaller and several times faster than gzip.
A compressed representation has its own ETag (the identity one with ``-zstd`` or ``-gzip``, as
Apache does); a validator with that suffix is matched against the identity ETag, so 304s work.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import threading

import zstandard

from metasrv.http.bytecache import ByteCache, cached_when_short
from metasrv.http.hotpath import ASGIApp, Message, Receive, Scope, Send
from metasrv.index.pages import MIME_HTML, MIME_SIMPLE_HTML, MIME_SIMPLE_JSON

COMPRESSIBLE = frozenset({"application/json", MIME_SIMPLE_JSON, MIME_SIMPLE_HTML, MIME_HTML})
MIN_BYTES = 1024  # below a packet, compressing saves nothing worth the CPU
CACHE_BYTES = 64 * 1024 * 1024
# A release's JSON (a few KB) compresses in microseconds; kept, 740,000 of them would fill the
# cache with what is cheaper to redo. Pages from this size up are kept (numpy's, the root).
CACHE_MIN_BYTES = 32 * 1024
GZIP_LEVEL = 6
ZSTD_LEVEL = 3  # zstd's default: about gzip 6's ratio on these pages, at a fraction of its CPU
_SUFFIXED = re.compile(rb'-(?:gzip|zstd)"')
# Compressing megabytes takes tens of milliseconds: off the event loop, so others are answered.
THREAD_BYTES = 256 * 1024
Header = tuple[bytes, bytes]
_compressors = threading.local()


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Return whether an Accept-Encoding header admits gzip (RFC 9110 section 12.5.3)."""
    weights = _weights(accept_encoding)
    if "gzip" in weights:
        return weights["gzip"] > 0
    if "x-gzip" in weights:
        return weights["x-gzip"] > 0
    return weights.get("*", 0.0) > 0


def accepts_zstd(accept_encoding: str | None) -> bool:
    """Return whether an Accept-Encoding header names zstd with a weight above zero."""
    # Not for "*": every client that says it decodes gzip, not all of them zstd.
    return _weights(accept_encoding).get("zstd", 0.0) > 0


def chosen_coding(accept_encoding: str | None) -> str | None:
    """Return the content coding to send: zstd, else gzip, else None (the body as it is)."""
    if accepts_zstd(accept_encoding):
        return "zstd"
    return "gzip" if accepts_gzip(accept_encoding) else None


# Clients send a few Accept-Encoding values, again and again: each is parsed once (a request asks
# two or three times; parsing was a few percent of a simple page's CPU).
_chosen_coding = cached_when_short(chosen_coding)


def _weights(accept_encoding: str | None) -> dict[str, float]:
    weights: dict[str, float] = {}
    if not accept_encoding:
        return weights
    for item in accept_encoding.split(","):
        coding, *parameters = (part.strip() for part in item.split(";"))
        weight = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[coding.lower()] = weight
    return weights


def _header(headers: list[Header], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _suffixed(etag: bytes, coding: str) -> bytes:
    suffix = f"-{coding}".encode()
    return etag[:-1] + suffix + b'"' if etag.endswith(b'"') else etag + suffix


def _compress(body: bytes, coding: str) -> bytes:
    if coding == "zstd":
        return _zstd_compressor().compress(body)
    return gzip.compress(body, GZIP_LEVEL, mtime=0)


def _zstd_compressor() -> zstandard.ZstdCompressor:
    # Making a compressor took 21 us of a 24 us page; one per thread, as one is not thread-safe.
    compressor: zstandard.ZstdCompressor | None = getattr(_compressors, "zstd", None)
    if compressor is None:
        compressor = _compressors.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor


def _vary(headers: list[Header]) -> list[Header]:
    vary = _header(headers, b"vary")
    kept = [(key, value) for key, value in headers if key.lower() != b"vary"]
    return [*kept, (b"vary", b"Accept-Encoding" if vary is None else vary + b", Accept-Encoding")]


def request_coding(scope: Scope) -> str | None:
    """Return the content coding an HTTP request's Accept-Encoding asks for, if any."""
    encoding = _header(scope["headers"], b"accept-encoding")
    return _chosen_coding(encoding.decode("latin-1") if encoding is not None else None)


def validated_scope(scope: Scope, coding: str | None) -> Scope:
    """Return ``scope`` with validators of compressed representations matching the identity's."""
    if coding is None:
        return scope
    return {**scope, "headers": [_unsuffix(key, value) for key, value in scope["headers"]]}


def encoded(
    status: int, headers: list[Header], body: bytes, coding: str | None
) -> tuple[list[Header], bytes] | None:
    """Return a whole answer as Compressor sends it; None for one it would keep compressed."""
    if not _compressible(status, headers):
        return headers, body
    if status != 200 or coding is None or len(body) < MIN_BYTES:
        return _uncompressed_headers(status, headers, coding), body
    if len(body) >= CACHE_MIN_BYTES:
        return None
    compressed = _compress(body, coding)
    return _compressed_headers(_vary(headers), compressed, coding), compressed


def _compressible(status: int, headers: list[Header]) -> bool:
    content_type = (_header(headers, b"content-type") or b"").split(b";")[0].strip()
    return content_type.decode("latin-1") in COMPRESSIBLE or status == 304


def _uncompressed_headers(status: int, headers: list[Header], coding: str | None) -> list[Header]:
    headers = _vary(headers)
    etag = _header(headers, b"etag")
    if coding is not None and etag is not None and status == 304:
        headers = [(k, v) for k, v in headers if k.lower() != b"etag"]
        headers.append((b"etag", _suffixed(etag, coding)))
    return headers


class Compressor:
    """An ASGI app that compresses ``app``'s compressible answers for clients that accept it."""

    def __init__(self, app: ASGIApp, cache_bytes: int = CACHE_BYTES) -> None:
        self.app = app
        self.cache = ByteCache(cache_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        coding = request_coding(scope)
        scope = validated_scope(scope, coding)
        held: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal held
            if held is None and message["type"] == "http.response.start":
                headers: list[Header] = list(message.get("headers", []))
                status = message["status"]
                if not _compressible(status, headers):
                    await send(message)  # files and redirects pass straight through
                    held = {"type": "passed"}
                    return
                if status != 200 or coding is None:
                    headers = _uncompressed_headers(status, headers, coding)
                    await send({**message, "headers": headers})
                    held = {"type": "passed"}
                    return
                held = {**message, "headers": _vary(headers)}
                compressed = self.cache.get(_key(url, held, coding))
                if compressed is not None:
                    # Kept from an earlier answer: the body the app goes on to send is the same.
                    await send(
                        {
                            **held,
                            "headers": _compressed_headers(held["headers"], compressed, coding),
                        }
                    )
                    await send({"type": "http.response.body", "body": compressed})
                    held = {"type": "sent"}
                return
            if held is not None and held["type"] == "sent":
                return
            if held is None or held["type"] == "passed" or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                assert coding is not None  # held only when there is one
                await self._send_compressed(held, b"".join(chunks), send, url, coding)

        url = (scope["path"], scope["query_string"])
        await self.app(scope, receive, capture)

    async def _send_compressed(
        self, start: Message, body: bytes, send: Send, url: tuple[str, bytes], coding: str
    ) -> None:
        if len(body) < MIN_BYTES:
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        if len(body) > THREAD_BYTES:
            compressed = await asyncio.to_thread(_compress, body, coding)
        else:
            compressed = _compress(body, coding)
        key = _key(url, start, coding)
        if key is not None and len(body) >= CACHE_MIN_BYTES:
            self.cache.put(key, compressed)
        await send({**start, "headers": _compressed_headers(start["headers"], compressed, coding)})
        await send({"type": "http.response.body", "body": compressed})


def _key(url: tuple[str, bytes], start: Message, coding: str) -> tuple[object, ...] | None:
    """Return the cache key of a compressed answer, None for one without an ETag."""
    etag = _header(start["headers"], b"etag")
    # An ETag validates one URL's representation: two routes may share one (a project's).
    return None if etag is None else (*url, etag, coding)


def _compressed_headers(headers: list[Header], compressed: bytes, coding: str) -> list[Header]:
    etag = _header(headers, b"etag")
    dropped = (b"content-length", b"etag", b"content-encoding")
    headers = [(key, value) for key, value in headers if key.lower() not in dropped]
    headers += [
        (b"content-encoding", coding.encode()),
        (b"content-length", str(len(compressed)).encode()),
    ]
    if etag is not None:
        headers.append((b"etag", _suffixed(etag, coding)))
    return headers


def _unsuffix(key: bytes, value: bytes) -> Header:
    """Match a validator of a compressed representation against the identity ETag it came from."""
    if key.lower() != b"if-none-match":
        return key, value
    return key, _SUFFIXED.sub(b'"', value)
