"""zstd or gzip on the wire: pages and JSON compressed once per ETag, validators still matching."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from metasrv.http.compression import CACHE_MIN_BYTES, Compressor, accepts_gzip, chosen_coding
from metasrv.http.hotpath import Message, Receive, Scope, Send
from metasrv.repo.catalog import CONFIG_PATH
from metasrv.repo.storage import Storage
from tests.builders import commit_projects, make_project
from tests.conftest import AsgiClient

UV = {"Accept-Encoding": "gzip, deflate, zstd"}  # what uv sends
GZIP = {"Accept-Encoding": "gzip, deflate"}  # what pip sends
GZIP_RAW = [(b"accept-encoding", b"gzip, deflate")]
IDENTITY = {"Accept-Encoding": "identity"}
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip, deflate, zstd", True),
        ("GZIP", True),
        ("deflate, gzip;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("*;q=0", False),
        ("*, gzip;q=0", False),
        ("gzip;q=bogus", False),
        ("identity", False),
        ("br, deflate", False),
        ("", False),
        (None, False),
    ],
)
def test_accept_encoding_is_read_with_its_weights(header: str | None, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        ("gzip, deflate, zstd", "zstd"),
        ("ZSTD;q=0.1, gzip", "zstd"),
        ("gzip, zstd;q=0", "gzip"),
        ("*", "gzip"),  # every client decodes gzip; zstd only to those that name it
        ("zstd;q=bogus", None),
        ("br", None),
        (None, None),
    ],
)
def test_zstd_goes_to_clients_that_name_it_and_gzip_to_the_rest(
    header: str | None, coding: str | None
) -> None:
    assert chosen_coding(header) == coding


@pytest.fixture
def many(storage: Storage) -> Storage:
    """Return the repository with enough projects and versions that pages are worth gzipping."""
    projects = [make_project(f"project-{n}", ["1.0"]) for n in range(60)]
    commit_projects(storage, *projects, make_project("big", [f"1.{n}" for n in range(30)]))
    return storage


@pytest.mark.parametrize(
    "url",
    [
        "/simple/",
        "/simple/?format=" + SIMPLE_JSON.replace("+", "%2B"),
        "/v1/projects",
        "/simple/big/",
        "/v1/projects/big",
    ],
)
@pytest.mark.parametrize(("accept", "coding"), [(GZIP, "gzip"), (UV, "zstd")])
def test_a_client_that_accepts_compression_gets_the_same_body_compressed(
    many: Storage, client: AsgiClient, url: str, accept: dict[str, str], coding: str
) -> None:
    plain = client.get(url, headers=IDENTITY)
    packed = client.get(url, headers=accept)
    assert "content-encoding" not in plain.headers
    assert packed.headers["content-encoding"] == coding
    assert packed.content == plain.content  # httpx decoded it
    assert int(packed.headers["content-length"]) < len(plain.content)
    assert "Accept-Encoding" in packed.headers["vary"]
    assert "Accept-Encoding" in plain.headers["vary"]
    assert packed.headers["etag"] == plain.headers["etag"][:-1] + f'-{coding}"'


@pytest.mark.parametrize("accept", [GZIP, UV])
def test_a_compressed_etag_gets_a_304_and_a_stale_one_a_200(
    many: Storage, client: AsgiClient, accept: dict[str, str]
) -> None:
    etag = client.get("/simple/", headers=accept).headers["etag"]
    again = client.get("/simple/", headers={**accept, "If-None-Match": etag})
    assert again.status_code == 304
    assert again.headers["etag"] == etag
    commit_projects(many, make_project("another", ["1.0"]))
    fresh = client.get("/simple/", headers={**accept, "If-None-Match": etag})
    assert fresh.status_code == 200
    assert b"another" in fresh.content


def test_a_commit_outside_data_keeps_the_root_page_and_its_etag(
    many: Storage, client: AsgiClient
) -> None:
    before = client.get("/simple/", headers=GZIP)
    config = many.read(many.resolve(None), CONFIG_PATH) or b""
    many.commit(many.head_branch(), {CONFIG_PATH: config + b"\n"}, "touch the config")
    after = client.get("/simple/", headers={**GZIP, "If-None-Match": before.headers["etag"]})
    assert after.status_code == 304
    assert after.headers["x-metasrv-at"] == many.resolve(None)


def test_small_answers_and_redirects_are_not_compressed(client: AsgiClient) -> None:
    root = client.get("/", headers=GZIP)
    assert root.status_code == 200
    assert "content-encoding" not in root.headers
    page = client.get("/simple/flask/", headers={"Accept": SIMPLE_JSON, **GZIP})
    filename = page.json()["files"][0]["filename"]
    redirect = client.get(f"/files/flask/{filename}", headers=GZIP)
    assert redirect.status_code in (302, 307)
    assert "content-encoding" not in redirect.headers


@pytest.mark.parametrize(("size", "kept"), [(CACHE_MIN_BYTES - 1, 0), (CACHE_MIN_BYTES, 1)])
def test_only_bodies_worth_keeping_are_kept_compressed(size: int, kept: int) -> None:
    """A release's few KB compress in microseconds: kept, 740,000 would fill the memory."""
    body = b"[" + b"1," * ((size - 3) // 2) + b"1" * ((size - 3) % 2 + 1) + b"]"
    assert len(body) == size

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"etag", b'"e"')]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    compressor = Compressor(app)
    for _ in range(2):
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)  # noqa: B023 - each round's own list, read in the same round

        async def receive() -> Message:
            return {"type": "http.request"}

        scope = {"type": "http", "path": "/v1/x", "query_string": b"", "headers": list(GZIP_RAW)}
        asyncio.run(compressor(scope, receive, send))
        assert gzip.decompress(sent[1]["body"]) == body
    assert len(compressor.cache) == kept


def test_a_kept_page_is_sent_from_the_cache_without_waiting_for_the_body() -> None:
    """A second ask of a kept page is answered at the app's start; its streamed body is dropped."""
    rounds: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        rounds.append(len(rounds))
        chunk = f'["{len(rounds)}"' + ', "x"' * CACHE_MIN_BYTES
        headers = [(b"content-type", b"application/json"), (b"etag", b'"e"')]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"]"})

    compressor = Compressor(app)

    def ask(path: str) -> list[Message]:
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        async def receive() -> Message:
            return {"type": "http.request"}

        scope = {"type": "http", "path": path, "query_string": b"", "headers": list(GZIP_RAW)}
        asyncio.run(compressor(scope, receive, send))
        return sent

    first, again, other = ask("/v1/x"), ask("/v1/x"), ask("/v1/y")
    assert [m["type"] for m in again] == ["http.response.start", "http.response.body"]
    assert again == first  # the first round's body, though the app's second differs
    assert (b"etag", b'"e-gzip"') in again[0]["headers"]
    assert gzip.decompress(other[1]["body"]).startswith(b'["3"')  # another URL: its own
