"""Source repositories: a PEP 503 / 691 index over http(s) or file://, or a folder of archives."""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import hashlib
import mimetypes
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit
from urllib.request import url2pathname

import httpx
import orjson

from metasrv.errors import InvalidArchive, InvalidInput, NotFound, SourceError
from metasrv.index.pages import (
    MIME_SIMPLE_JSON,
    ProjectPage,
    SourceFile,
    parse_html_listing,
    parse_html_project,
    parse_json_listing,
    parse_json_project,
)
from metasrv.index.transport import AiohttpClient
from metasrv.model import SourceState
from metasrv.names import normalize_name

ACCEPT = f"{MIME_SIMPLE_JSON}, application/vnd.pypi.simple.latest+html;q=0.2, text/html;q=0.1"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_DELAY_SECONDS = 60.0
MAX_PAGE_BYTES = 64 * 1024 * 1024
USER_AGENT = "metasrv-sync"
SINK_DEADLINE_FACTOR = 20


@dataclass(frozen=True, slots=True)
class FetchOptions:
    """How politely and persistently to talk to a source."""

    concurrency: int = 8
    retries: int = 4
    backoff_seconds: float = 0.5
    timeout_seconds: float = 30.0
    # Ask for a wheel's <url>.metadata (PEP 658) though its page lists none: a mirror may serve
    # PyPI's metadata files but leave them out of its pages.
    probe_metadata_files: bool = False


def _read_file_url(url: str, headers: Mapping[str, str], max_bytes: int) -> Fetched:
    """Answer a file:// GET from disk: directory index pages, byte ranges, 404s, size caps."""
    path = Path(url2pathname(urlsplit(url).path))
    if path.is_dir():
        path = next((path / n for n in ("index.json", "index.html") if (path / n).is_file()), path)
    if not path.is_file():
        return Fetched(404, httpx.Headers(), b"", url)
    content_type = (
        MIME_SIMPLE_JSON if path.suffix == ".json" else mimetypes.guess_type(path.name)[0]
    )
    response_headers = httpx.Headers({"content-type": content_type or "application/octet-stream"})
    byte_range = headers.get("range", "")
    if not byte_range.startswith("bytes="):
        return Fetched(200, response_headers, read_capped(path, max_bytes), url)
    size = path.stat().st_size
    start, end = _parse_range(byte_range.removeprefix("bytes="), size)
    with path.open("rb") as file:
        file.seek(start)
        content = file.read(min(end - start, max_bytes + 1))
    if len(content) > max_bytes:
        raise InvalidArchive(f"{path.name}: range larger than {max_bytes} bytes")
    response_headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
    return Fetched(206, response_headers, content, url)


def read_capped(path: Path, max_bytes: int) -> bytes:
    """Return a local file's bytes, or InvalidArchive when it holds more than ``max_bytes``."""
    with path.open("rb") as file:
        content = file.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise InvalidArchive(f"{path.name}: larger than {max_bytes} bytes")
    return content


def _parse_range(spec: str, size: int) -> tuple[int, int]:
    first, _, last = spec.partition("-")
    if not first:
        return max(0, size - int(last)), size
    return int(first), min(size, int(last) + 1) if last else size


DECODED = frozenset({"identity", "gzip", "x-gzip", "deflate"})


def make_client(options: FetchOptions) -> AiohttpClient:
    """Return the HTTP client a sync shares between its requests."""
    return AiohttpClient(
        timeout=options.timeout_seconds,
        follow_redirects=True,
        # What is decoded is counted against the caps chunk by chunk: gzip's inflation per chunk
        # is bounded; codings asked for by default when a decoder is installed (zstd) are not.
        headers={"user-agent": USER_AGENT, "accept-encoding": "gzip, deflate"},
    )  # no connection limit: a Fetcher holds at most ``concurrency`` requests in flight


@dataclass(frozen=True, slots=True)
class Fetched:
    """A response read whole: status, headers, body (decoded), and the URL after redirects."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: str

    @property
    def text(self) -> str:
        """Return the body as text, in the charset the response names (UTF-8 by default)."""
        charset = self.headers.get_list("content-type")[:1]
        encoding = "utf-8"
        if charset and "charset=" in charset[0]:
            encoding = charset[0].split("charset=", 1)[1].split(";")[0].strip() or "utf-8"
        try:
            return self.content.decode(encoding, errors="replace")
        except LookupError:  # a charset Python does not know: read it as the default
            return self.content.decode("utf-8", errors="replace")


class Fetcher:
    """GETs with bounded concurrency, timeouts, and retries with backoff that honour Retry-After."""

    def __init__(
        self, client: httpx.AsyncClient, options: FetchOptions, *, local: bool = False
    ) -> None:
        self.client = client
        self.options = options
        # Whether file:// URLs may be read: only for a source that is itself on this machine.
        self.local = local
        self._slots = asyncio.Semaphore(options.concurrency)
        self.bytes_fetched = 0
        self.requests = 0

    async def get(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = MAX_PAGE_BYTES,
        sink: BinaryIO | None = None,
        method: str = "GET",
    ) -> Fetched:
        """Return the response to a GET; 5xx, 429, timeouts and transport errors are retried.

        With a ``sink`` the body goes there instead of into memory (a root index at PyPI scale).
        """
        if urlsplit(url).scheme == "file":
            if not self.local:
                # An http(s) index must not make us read this machine's files (nor tell of them).
                raise InvalidArchive(f"{url[:200]}: a file:// URL from a source that is not local")
            return _drain(_read_file_url(url, headers or {}, max_bytes), sink)
        # One deadline for the whole request, as a source trickling a byte at a time never trips
        # a per-read timeout; a streamed root listing (PyPI: hundreds of MB) gets more time.
        deadline = self.options.timeout_seconds * (SINK_DEADLINE_FACTOR if sink else 1)
        problem = ""
        for attempt in range(self.options.retries + 1):
            delay = self.options.backoff_seconds * 2**attempt
            try:
                async with self._slots, asyncio.timeout(deadline):
                    response = await self._get_capped(method, url, headers or {}, max_bytes, sink)
            except (TimeoutError, httpx.TimeoutException):
                problem = f"no whole answer within {deadline:g} s"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                # Redirect loops, redirects to other schemes, undecodable bodies: not transient.
                raise SourceError(f"{url[:200]}: {type(exc).__name__}: {exc}") from None
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response
                problem = f"HTTP {response.status_code}"
                delay = _retry_after(response) or delay
            if attempt < self.options.retries:
                await asyncio.sleep(min(delay, MAX_RETRY_DELAY_SECONDS))
        raise SourceError(f"{url[:200]}: {problem} after {self.options.retries + 1} attempts")

    async def head(self, url: str) -> Fetched:
        """Return the response to a HEAD, retried as a GET is."""
        return await self.get(url, max_bytes=0, method="HEAD")

    async def _get_capped(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        max_bytes: int,
        sink: BinaryIO | None,
    ) -> Fetched:
        self.requests += 1
        if sink is not None:
            sink.seek(0)
            sink.truncate()  # a retry starts the body again
        async with self.client.stream(method, url, headers=headers) as response:
            declared = response.headers.get("content-length", "")
            if method == "HEAD":
                return Fetched(response.status_code, response.headers, b"", str(response.url))
            coding = response.headers.get("content-encoding", "identity").strip().lower()
            if coding not in DECODED:
                raise InvalidArchive(f"{url}: content-encoding {coding[:40]!r} was not asked for")
            # 19 digits tell a length over any cap; int() would refuse 4,301 of them.
            if declared.isascii() and declared.isdigit() and int(declared[:19]) > max_bytes:
                raise InvalidArchive(f"{url}: larger than {max_bytes} bytes ({declared[:20]})")
            chunks, total = [], 0
            # Counted after Content-Encoding is undone, so a compressed bomb stops at the cap too.
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise InvalidArchive(f"{url}: larger than {max_bytes} bytes")
                if sink is None:
                    chunks.append(chunk)
                else:
                    sink.write(chunk)
            self.bytes_fetched += response.num_bytes_downloaded
            return Fetched(
                response.status_code, response.headers, b"".join(chunks), str(response.url)
            )


def _drain(fetched: Fetched, sink: BinaryIO | None) -> Fetched:
    """Move a body read whole into ``sink``, when there is one."""
    if sink is None:
        return fetched
    sink.seek(0)
    sink.truncate()
    sink.write(fetched.content)
    return Fetched(fetched.status_code, fetched.headers, b"", fetched.url)


def _retry_after(response: Fetched) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class IndexSource:
    """A PEP 503 / PEP 691 simple index."""

    def __init__(self, url: str, fetcher: Fetcher) -> None:
        self.url = url if url.endswith("/") else url + "/"
        self.fetcher = fetcher

    async def list_projects(self) -> dict[str, str | None]:
        """Return every project: normalized name -> the name as the root page spells it."""
        response = await self.fetcher.get(self.url, {"accept": ACCEPT})
        _check_status(response, self.url)
        if _is_json(response):
            listed = parse_json_listing(_json_object(response), self.url)
        else:
            listed = parse_html_listing(response.text)
        projects: dict[str, str | None] = {}
        for name in listed:
            try:
                projects[normalize_name(name)] = name
            except InvalidInput:
                continue  # a listing entry that is no project name is not ours to mirror
        return projects

    async def project_page(self, normalized_name: str, state: SourceState) -> ProjectPage | None:
        """Return a project's page, or None when it has not changed since ``state``."""
        url = urljoin(self.url, f"{normalized_name}/")
        headers = {"accept": ACCEPT}
        if state.etag:
            headers["if-none-match"] = state.etag
        if state.last_modified:
            headers["if-modified-since"] = state.last_modified
        response = await self.fetcher.get(url, headers)
        if response.status_code == 304:
            return None
        if response.status_code == 404:
            raise NotFound(f"the source has no project {normalized_name!r}")
        _check_status(response, url)
        base = response.url
        if _is_json(response):
            page = parse_json_project(_json_object(response), base)
        else:
            page = parse_html_project(response.text, base, normalized_name)
        serial_header = response.headers.get("x-pypi-last-serial")
        page_state = SourceState(
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
            serial=page.state.serial or _serial(serial_header),
        )
        return ProjectPage(page.name, page.files, page.versions, page_state)


def _serial(header: str | None) -> int | None:
    """Return an X-PyPI-Last-Serial header's number, or None when it is none."""
    if header is None or not header.isascii() or not header.isdigit() or len(header) > 18:
        return None
    return int(header)


def _check_status(response: Fetched, url: str) -> None:
    if response.status_code != 200:
        raise SourceError(f"{url}: HTTP {response.status_code}")


def _is_json(response: Fetched) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";", maxsplit=1)[0].strip() == MIME_SIMPLE_JSON


def _json_object(response: Fetched) -> Any:
    try:
        # RFC 8259 lets a parser ignore a byte order mark; json.loads did, orjson does not.
        document = orjson.loads(response.content.removeprefix(codecs.BOM_UTF8))
    except orjson.JSONDecodeError as exc:
        raise SourceError(f"{response.url}: invalid JSON: {exc}") from None
    return document


class FolderSource:
    """A plain folder of wheels and sdists: the company bucket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = path.resolve().as_uri() + "/"

    def archives(self) -> dict[str, list[Path]]:
        """Return the folder's archives grouped by normalized project name."""
        from metasrv.index.archives import project_of_filename

        grouped: dict[str, list[Path]] = {}
        for path in sorted(self.path.iterdir()):
            normalized_name = project_of_filename(path.name) if path.is_file() else None
            if normalized_name is not None:
                grouped.setdefault(normalized_name, []).append(path)
        return grouped

    async def list_projects(self) -> dict[str, str | None]:
        """Return the projects the folder holds files of; a folder registers no spellings."""
        return dict.fromkeys(sorted(self.archives()))

    async def project_page(self, normalized_name: str, state: SourceState) -> ProjectPage | None:
        """Return the folder's files of one project; unchanged when no file's mtime moved."""
        paths = self.archives().get(normalized_name)
        if not paths:
            raise NotFound(f"the source has no project {normalized_name!r}")
        stamp = max(path.stat().st_mtime_ns for path in paths)
        etag = f"{len(paths)}-{stamp}"
        if state.etag == etag:
            return None
        files = tuple(_folder_file(path) for path in paths)
        return ProjectPage(normalized_name, files, state=SourceState(etag=etag))


def _folder_file(path: Path) -> SourceFile:
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    stat = path.stat()
    return SourceFile(
        filename=path.name,
        url=path.resolve().as_uri(),
        hashes={"sha256": digest},
        size=stat.st_size,
        upload_time=datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )


def open_source(location: str, fetcher: Fetcher) -> IndexSource | FolderSource:
    """Return the source a URL or path names: an index, or a folder holding archives."""
    scheme = urlsplit(location).scheme
    if scheme in ("http", "https"):
        return IndexSource(location, fetcher)
    path = Path(url2pathname(urlsplit(location).path)) if scheme == "file" else Path(location)
    if scheme not in ("", "file") or not path.is_dir():
        raise SourceError(f"source {location!r} is neither an http(s) index nor a folder")
    if any(p.suffix in (".whl", ".gz", ".zip") for p in path.iterdir()):
        return FolderSource(path)
    fetcher.local = True
    return IndexSource(path.resolve().as_uri() + "/", fetcher)
