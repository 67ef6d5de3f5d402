"""A real package index on 127.0.0.1 that serves test-built archives and misbehaves on request."""

from __future__ import annotations

import codecs
import functools
import gzip
import hashlib
import html
import json
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import zstandard
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from metasrv.index.archives import is_wheel
from tests.deadlines import THREAD_DEADLINE_SECONDS

MIME_JSON = "application/vnd.pypi.simple.v1+json"
MAX_PAGE_BYTES = 64 * 1024 * 1024
# Faults that change only the body of the answer.
BODY_FAULTS: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda _: b"<<<not a page>>>",
    "bom": lambda body: codecs.BOM_UTF8 + body,
}


@dataclass
class IndexBehaviour:
    """What the index does: formats, features, and faults keyed by request path."""

    json: bool = True
    pep658: bool = True
    ranges: bool = True
    # path -> faults consumed one per request: "500", "429", "404", "truncate", "hang", "garbage",
    # "hold" (answer normally once released), "not-http" (bytes that are not an HTTP response),
    # "redirect-loop", "redirect-ftp", "bad-encoding", "trickle" (a byte per 0.1 s), "oversize",
    # "gzip-bomb" (a few kB that inflate past the page cap), "zstd-bomb" (the same, unasked, in
    # zstd), "huge-total" (a 5,000-digit
    # Content-Range total on a range answer), "bom" (the page after a UTF-8 byte order mark)
    faults: dict[str, list[str]] = field(default_factory=dict)
    # project -> edits of its PEP 691 page document before it is served (wrong types, ...)
    pages: dict[str, Callable[[dict[str, Any]], None]] = field(default_factory=dict)
    # filename -> bytes served instead of the file's (its listed hash stays the real one)
    tampered: dict[str, bytes] = field(default_factory=dict)
    # filename -> the metadata hash the page lists (to provoke a mismatch)
    metadata_hash: dict[str, str] = field(default_factory=dict)
    # normalized name -> PEP 691 _last-serial; when set, the JSON root lists every project's
    serials: dict[str, int] | None = None
    root_serials: bool = True  # False: only the project pages give serials
    # filename -> PEP 592 yank (True or a reason)
    yanked: dict[str, bool | str] = field(default_factory=dict)


@dataclass
class LocalIndex:
    """A running index: where it is, what it serves, and every request it saw."""

    url: str
    folder: Path
    behaviour: IndexBehaviour
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)  # the paths asked for by HEAD, in order
    bytes_sent: int = 0
    gzip_sent: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    def page_requests(self) -> list[str]:
        """Return the paths of the root and project pages requested, in order."""
        return [path for path, _ in self.requests if path.startswith("/simple/")]

    def downloads(self, filename: str | None = None) -> int:
        """Return how many files (or ``filename``) were fetched whole; sync reads by ranges."""
        paths = [path for path, ranged in list(self.requests) if not ranged]
        if filename is None:
            return sum(path.startswith("/files/") for path in paths)
        return paths.count(f"/files/{filename}")

    @property
    def simple_url(self) -> str:
        return f"{self.url}/simple/"

    def files_of(self, normalized_name: str) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if _project_of(p.name) == normalized_name)


def _project_of(filename: str) -> str | None:
    if filename.endswith(".whl"):
        return str(parse_wheel_filename(filename)[0])
    if filename.endswith(".tar.gz"):
        return str(parse_sdist_filename(filename)[0])
    return None


def _handler(index: LocalIndex) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Keep the test output quiet."""

        def do_GET(self) -> None:
            index.requests.append((self.path, self.headers.get("range")))
            faults = index.behaviour.faults.get(self.path.split("?")[0])
            fault = faults.pop(0) if faults else None
            if fault == "hold":
                index.release.wait(THREAD_DEADLINE_SECONDS)  # then answer as if nothing happened
            if fault == "hang":
                # Bounded: a hung request outlives neither its test nor the deadline.
                index.release.wait(THREAD_DEADLINE_SECONDS)
                self.close_connection = True  # the client sees the connection drop, and retries
                return
            if fault == "not-http":
                self.wfile.write(b"<<<not HTTP>>>\r\n\r\n")
                self.close_connection = True
                return
            if fault in ("500", "429", "404"):
                self._send(int(fault), b"busy", "text/plain", {"retry-after": "0"})
                return
            if fault in ("redirect-loop", "redirect-ftp"):
                target = self.path if fault == "redirect-loop" else "ftp://127.0.0.1/x/"
                self._send(302, b"", "text/plain", {"location": target})
                return
            if fault == "oversize":
                self._stream_zeros(MAX_PAGE_BYTES + 1)
                return
            if fault in ("gzip-bomb", "zstd-bomb"):
                # zstd unasked for: a client that decodes whatever it is sent inflates it.
                coding, bomb = (
                    ("gzip", _gzip_bomb()) if fault == "gzip-bomb" else ("zstd", _zstd_bomb())
                )
                self._send(200, bomb, MIME_JSON, {"content-encoding": coding}, compress=False)
                return
            body, content_type, status, extra = self._route()
            if fault == "truncate":
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            if fault in BODY_FAULTS:
                body = BODY_FAULTS[fault](body)
            if fault == "huge-total" and status == 206:
                extra = {"content-range": f"bytes 0-0/{'9' * 5000}"}
            if fault == "bad-encoding":
                extra = {**extra, "content-encoding": "gzip"}  # the body is not gzip
                self._send(status, body, content_type, extra, compress=False)
                return
            if fault == "trickle":
                self._trickle(status, body, content_type)
                return
            self._send(status, body, content_type, extra)

        def _trickle(self, status: int, body: bytes, content_type: str) -> None:
            """Send the body one byte per 0.1 s: each read is quick, the whole answer is not."""
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            for offset in range(len(body)):
                if index.release.wait(0.1):
                    return
                try:
                    self.wfile.write(body[offset : offset + 1])
                    self.wfile.flush()
                except OSError:
                    return

        def _stream_zeros(self, size: int) -> None:
            """Send ``size`` bytes of a JSON page without a Content-Length, until closed."""
            self.send_response(200)
            self.send_header("content-type", MIME_JSON)
            self.send_header("connection", "close")
            self.end_headers()
            self.close_connection = True
            chunk = b" " * (1024 * 1024)
            try:
                for _ in range(size // len(chunk) + 1):
                    self.wfile.write(chunk)
            except OSError:
                return

        def do_HEAD(self) -> None:
            index.heads.append(self.path)
            body, content_type, status, extra = self._route()
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            if index.behaviour.ranges:
                self.send_header("accept-ranges", "bytes")
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()

        def _route(self) -> tuple[bytes, str, int, dict[str, str]]:
            path = self.path.split("?")[0]
            behaviour = index.behaviour
            if path == "/simple/":
                names = sorted({n for p in index.folder.iterdir() if (n := _project_of(p.name))})
                serials = behaviour.serials if behaviour.root_serials else None
                projects = [
                    {"name": n} if serials is None else {"name": n, "_last-serial": serials[n]}
                    for n in names
                ]
                return self._page(
                    {"meta": {"api-version": "1.1"}, "projects": projects},
                    "".join(f'<a href="{n}/">{n}</a>\n' for n in names),
                )
            if path.startswith("/simple/") and path.endswith("/"):
                name = path.removeprefix("/simple/").rstrip("/")
                files = index.files_of(canonicalize_name(name))
                if not files or canonicalize_name(name) != name:
                    return b"not found", "text/plain", 404, {}
                return self._project_page(name, files)
            if path.startswith("/files/"):
                filename = path.removeprefix("/files/")
                if filename.endswith(".metadata") and behaviour.pep658:
                    return (
                        _metadata_of(index.folder / filename.removesuffix(".metadata")),
                        "text/plain",
                        200,
                        {},
                    )
                target = index.folder / filename
                if target.is_file():
                    content = behaviour.tampered.get(filename, target.read_bytes())
                    byte_range = self.headers.get("range")
                    if behaviour.ranges and byte_range and byte_range.startswith("bytes="):
                        start, end = _span(byte_range.removeprefix("bytes="), len(content))
                        return (
                            content[start:end],
                            "application/octet-stream",
                            206,
                            {"content-range": f"bytes {start}-{end - 1}/{len(content)}"},
                        )
                    return content, "application/octet-stream", 200, {}
            return b"not found", "text/plain", 404, {}

        def _project_page(
            self, name: str, files: list[Path]
        ) -> tuple[bytes, str, int, dict[str, str]]:
            entries = []
            for path in files:
                entry: dict[str, object] = {
                    "filename": path.name,
                    "url": f"/files/{path.name}",
                    "hashes": {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
                    "size": path.stat().st_size,
                    "upload-time": "2024-01-02T03:04:05.000000Z",
                    "yanked": index.behaviour.yanked.get(path.name, False),
                }
                if index.behaviour.pep658 and is_wheel(path.name):
                    digest = index.behaviour.metadata_hash.get(
                        path.name, hashlib.sha256(_metadata_of(path)).hexdigest()
                    )
                    entry["core-metadata"] = {"sha256": digest}
                entries.append(entry)
            serials = index.behaviour.serials
            document: dict[str, Any] = {
                "meta": {"api-version": "1.1", "_last-serial": serials[name] if serials else 7},
                "name": name,
                "files": entries,
            }
            anchors = "".join(
                f'<a href="{e["url"]}#sha256={e["hashes"]["sha256"]}"'  # type: ignore[index]
                + (
                    f' data-core-metadata="sha256={e["core-metadata"]["sha256"]}"'  # type: ignore[index]
                    if "core-metadata" in e
                    else ""
                )
                + f">{html.escape(str(e['filename']))}</a>\n"
                for e in entries
            )
            edit = index.behaviour.pages.get(name)
            if edit is not None:
                edit(document)
            return self._page(document, anchors)

        def _page(self, document: object, anchors: str) -> tuple[bytes, str, int, dict[str, str]]:
            body = json.dumps(document).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if self.headers.get("if-none-match") == etag:
                return b"", "text/plain", 304, {"etag": etag}
            if index.behaviour.json and MIME_JSON in self.headers.get("accept", ""):
                return body, MIME_JSON, 200, {"etag": etag}
            page = f"<!DOCTYPE html><html><body>\n{anchors}</body></html>\n".encode()
            return page, "text/html", 200, {"etag": etag}

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str,
            extra: dict[str, str],
            *,
            compress: bool = True,
        ) -> None:
            compressible = compress and status == 200 and self.path.startswith("/simple/")
            if compressible and "gzip" in self.headers.get("accept-encoding", ""):
                body = gzip.compress(body)
                extra = {**extra, "content-encoding": "gzip"}
                index.gzip_sent += 1
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            if status != 304:
                self.wfile.write(body)
                index.bytes_sent += len(body)

    return Handler


@functools.cache
def _zstd_bomb() -> bytes:
    """Return a zstd body of spaces that inflates to twice the page cap."""
    return zstandard.ZstdCompressor().compress(b" " * (2 * MAX_PAGE_BYTES))


def _gzip_bomb() -> bytes:
    """Return a gzip body of spaces that inflates to just past the page cap."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b" " * (1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(MAX_PAGE_BYTES // len(chunk) + 1)]
    return b"".join(parts) + compressor.flush()


def _metadata_of(archive_path: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(archive_path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


def _span(spec: str, size: int) -> tuple[int, int]:
    first, _, last = spec.partition("-")
    if not first:
        return max(0, size - int(last)), size
    return int(first), min(size, int(last) + 1) if last else size


@contextmanager
def serve_index(folder: Path, behaviour: IndexBehaviour | None = None) -> Iterator[LocalIndex]:
    """Serve ``folder`` as a simple index on 127.0.0.1 for the duration of a block."""
    index = LocalIndex(url="", folder=folder, behaviour=behaviour or IndexBehaviour())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(index))
    server.daemon_threads = True
    index.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield index
    finally:
        index.release.set()
        server.shutdown()
        server.server_close()
        thread.join(THREAD_DEADLINE_SECONDS)
        assert not thread.is_alive(), "the local index did not shut down"
