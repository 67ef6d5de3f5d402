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

import zstandard

from metasrv.http.bytecache import ByteCache
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


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _suffixed(etag: bytes, coding: str) -> bytes:
    suffix = f"-{coding}".encode()
    return etag[:-1] + suffix + b'"' if etag.endswith(b'"') else etag + suffix


def _compress(body: bytes, coding: str) -> bytes:
    if coding == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(body)
    return gzip.compress(body, GZIP_LEVEL, mtime=0)


def _vary(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    vary = _header(headers, b"vary")
    kept = [(key, value) for key, value in headers if key.lower() != b"vary"]
    return [*kept, (b"vary", b"Accept-Encoding" if vary is None else vary + b", Accept-Encoding")]


class Compressor:
    """An ASGI app that compresses ``app``'s compressible answers for clients that accept it."""

    def __init__(self, app: ASGIApp, cache_bytes: int = CACHE_BYTES) -> None:
        self.app = app
        self.cache = ByteCache(cache_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_headers: list[tuple[bytes, bytes]] = scope["headers"]
        encoding = _header(request_headers, b"accept-encoding")
        coding = chosen_coding(encoding.decode("latin-1") if encoding is not None else None)
        if coding is not None:
            scope = {**scope, "headers": [_unsuffix(key, value) for key, value in request_headers]}
        held: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal held
            if held is None and message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                content_type = (_header(headers, b"content-type") or b"").split(b";")[0].strip()
                if content_type.decode("latin-1") not in COMPRESSIBLE and message["status"] != 304:
                    await send(message)  # files and redirects pass straight through
                    held = {"type": "passed"}
                    return
                headers = _vary(headers)
                if message["status"] != 200 or coding is None:
                    etag = _header(headers, b"etag")
                    if coding is not None and etag is not None and message["status"] == 304:
                        headers = [(k, v) for k, v in headers if k.lower() != b"etag"]
                        headers.append((b"etag", _suffixed(etag, coding)))
                    await send({**message, "headers": headers})
                    held = {"type": "passed"}
                    return
                held = {**message, "headers": headers}
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
        headers: list[tuple[bytes, bytes]] = start["headers"]
        if len(body) < MIN_BYTES:
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        etag = _header(headers, b"etag")
        # An ETag validates one URL's representation: two routes may share one (a project's).
        key = None if etag is None else (*url, etag, coding)
        compressed = self.cache.get(key) if key is not None else None
        if compressed is None:
            if len(body) > THREAD_BYTES:
                compressed = await asyncio.to_thread(_compress, body, coding)
            else:
                compressed = _compress(body, coding)
            if key is not None and len(body) >= CACHE_MIN_BYTES:
                self.cache.put(key, compressed)
        dropped = (b"content-length", b"etag", b"content-encoding")
        headers = [(key, value) for key, value in headers if key.lower() not in dropped]
        headers += [
            (b"content-encoding", coding.encode()),
            (b"content-length", str(len(compressed)).encode()),
        ]
        if etag is not None:
            headers.append((b"etag", _suffixed(etag, coding)))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": compressed})


def _unsuffix(key: bytes, value: bytes) -> tuple[bytes, bytes]:
    """Match a validator of a compressed representation against the identity ETag it came from."""
    if key.lower() != b"if-none-match":
        return key, value
    return key, _SUFFIXED.sub(b'"', value)
