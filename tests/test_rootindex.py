"""A source's root read into a listing: serials, spellings, the ETag; broken roots refused."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metasrv.errors import SourceError
from metasrv.index.client import Fetcher, FetchOptions, make_client, open_source
from metasrv.index.rootindex import (
    RootListing,
    iter_html_projects,
    iter_json_projects,
    read_root,
)
from tests.deadlines import BoundedThread
from tests.distributions import build_wheel
from tests.indexserver import IndexBehaviour, serve_index

FETCH = FetchOptions(backoff_seconds=0.01, timeout_seconds=5)
MEGABYTE = 1 << 20


def read(location: str, etag: str | None = None) -> RootListing | None:
    async def run() -> RootListing | None:
        async with make_client(FETCH) as client:
            return await read_root(open_source(location, Fetcher(client, FETCH)), etag)

    return asyncio.run(run())


@contextmanager
def serving(body: bytes, headers: dict[str, str]) -> Iterator[str]:
    """Serve ``body`` with exactly ``headers`` to every GET; yield the root's URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            for key, value in {**headers, "content-length": str(len(body))}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Keep the test output quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = BoundedThread(server.serve_forever, "root-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/simple/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


JSON_ROOT = b'{"meta": {"api-version": "1.1"}, "projects": [{"name": "a", "_last-serial": 4}]}'
HTML_ROOT = b'<html><body><a href="/simple/a/">a</a>\n<a href="/simple/b/">b</a></body></html>'


@pytest.mark.parametrize(
    "content_type",
    [
        "application/vnd.pypi.simple.v1+json;charset=utf-8",
        "application/vnd.pypi.simple.v1+json ; charset=utf-8",
    ],
)
def test_a_json_root_whose_content_type_has_parameters_is_read_as_json(content_type: str) -> None:
    with serving(JSON_ROOT, {"content-type": content_type}) as url:
        listing = read(url)
    assert listing is not None
    assert listing.serials == {"a": 4}
    assert listing.etag is None


def test_a_root_without_a_content_type_is_read_as_html() -> None:
    with serving(HTML_ROOT, {}) as url:
        listing = read(url)
    assert listing is not None
    assert listing.serials == {"a": None, "b": None}


def test_bytes_of_a_root_that_are_not_utf_8_do_not_stop_it_being_read() -> None:
    body = HTML_ROOT.replace(b"\n", b"\n<!-- caf\xe9 -->\n")
    with serving(body, {"content-type": "text/html", "etag": '"e"'}) as url:
        listing = read(url)
    assert listing is not None
    assert listing.serials == {"a": None, "b": None}
    assert listing.etag == '"e"'


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    folder = tmp_path / "archives"
    folder.mkdir()
    for name in ("alpha", "beta"):
        build_wheel(folder, name, "1.0")
    return folder


def test_a_json_root_gives_each_projects_serial_and_the_roots_etag(archives: Path) -> None:
    with serve_index(archives, IndexBehaviour(serials={"alpha": 5, "beta": 9})) as index:
        listing = read(index.simple_url)
        assert listing is not None
        assert listing.serials == {"alpha": 5, "beta": 9}
        assert listing.etag is not None
        assert listing.etag.startswith('"')
        assert listing.spells_names
        assert read(index.simple_url, listing.etag) is None  # 304: nothing changed
        assert read(index.simple_url, '"other"') == listing


def test_an_html_root_gives_names_without_serials(archives: Path) -> None:
    behaviour = IndexBehaviour(json=False, serials={"alpha": 5, "beta": 9})
    with serve_index(archives, behaviour) as index:
        listing = read(index.simple_url)
    assert listing is not None
    assert listing.serials == {"alpha": None, "beta": None}
    assert listing.etag is not None


def test_a_root_that_keeps_failing_is_a_source_error_naming_the_status(archives: Path) -> None:
    with serve_index(archives, IndexBehaviour(faults={"/simple/": ["500"] * 20})) as index:
        with pytest.raises(SourceError) as raised:
            read(index.simple_url)
        assert str(raised.value).startswith(f"{index.simple_url}: HTTP 500")


def test_a_folders_listing_has_no_serials_and_no_spellings(archives: Path) -> None:
    listing = read(str(archives))
    assert listing is not None
    assert (listing.serials, listing.spellings) == ({"alpha": None, "beta": None}, {})
    assert not listing.spells_names
    assert listing.etag is None


def test_a_listing_keeps_a_names_spelling_only_where_it_is_not_normalized() -> None:
    listing = RootListing()
    listing.add("Foo.Bar", 3)
    listing.add("baz", None)
    listing.add("-not a name-", 4)
    listing.add("qux", 7)
    assert listing.serials == {"foo-bar": 3, "baz": None, "qux": 7}
    assert listing.spellings == {"foo-bar": "Foo.Bar"}


def test_an_html_root_with_text_after_the_last_anchor_still_lists_every_name() -> None:
    page = '<html><body><a href="/simple/a/">a</a>\n<a href="/simple/b/">b</a>\n</body></html>'
    assert list(iter_html_projects(io.StringIO(page))) == ["a", "b"]
    assert list(iter_html_projects(io.StringIO(""))) == []


def test_an_html_root_whose_anchors_are_cut_by_a_chunk_of_a_megabyte_lists_each_once() -> None:
    # Anchors of 30-odd characters across three megabyte chunks: two are cut at a chunk's end.
    anchors = [f'<a href="/simple/p{n}/">p{n}</a>\n' for n in range(100_000)]
    names = list(iter_html_projects(io.StringIO(f"<html><body>{''.join(anchors)}</body></html>")))
    assert names == [f"p{n}" for n in range(100_000)]


def test_an_html_root_with_an_anchor_longer_than_a_megabyte_is_refused() -> None:
    page = '<a href="/simple/a/">a</a><a href="/simple/b/">' + "b" * (MEGABYTE * 5 // 2) + "</a>"
    with pytest.raises(SourceError) as raised:
        list(iter_html_projects(io.StringIO(page)))
    assert str(raised.value) == "root page: an anchor longer than a megabyte"


def test_an_html_root_with_a_long_anchor_under_a_megabyte_is_read() -> None:
    # The long anchor starts an eighth into the first megabyte read and ends in the next one.
    short, long_name = "a" * (MEGABYTE // 8), "b" * (MEGABYTE * 7 // 8)
    page = f'<a href="/simple/a/">{short}</a>\n<a href="/simple/b/">{long_name}</a>\n'
    assert list(iter_html_projects(io.StringIO(page))) == [short, long_name]


def test_an_anchor_that_fills_the_whole_first_read_is_read() -> None:
    # No </a> in the first megabyte read at all: the whole of it waits for the next read.
    long_name = "x" * MEGABYTE
    page = f'<a href="/simple/x/">{long_name}</a>\n<a href="/simple/y/">y</a>\n'
    assert list(iter_html_projects(io.StringIO(page))) == [long_name, "y"]


def test_a_json_root_whose_entries_are_cut_by_a_chunk_of_a_megabyte_reads_each_once() -> None:
    entries = ", ".join(f'{{"name": "p{n}", "_last-serial": {n}}}' for n in range(60_000))
    text = f'{{"meta": {{"_last-serial": 1}}, "projects": [{entries}]}}'
    assert len(text) > 2 * MEGABYTE
    assert list(iter_json_projects(io.StringIO(text))) == [(f"p{n}", n) for n in range(60_000)]


def test_a_json_value_under_a_megabyte_is_read() -> None:
    # The long name starts an eighth into the first megabyte read and ends in the next one.
    short, long_name = "a" * (MEGABYTE // 8), "b" * (MEGABYTE * 7 // 8)
    text = f'{{"projects": [{{"name": "{short}"}}, {{"name": "{long_name}"}}]}}'
    assert list(iter_json_projects(io.StringIO(text))) == [(short, None), (long_name, None)]


def test_a_json_value_longer_than_a_megabyte_is_refused() -> None:
    text = '{"projects": [{"name": "' + "a" * (MEGABYTE * 5 // 2) + '"}]}'
    with pytest.raises(SourceError) as raised:
        list(iter_json_projects(io.StringIO(text)))
    assert str(raised.value).startswith("root index: invalid JSON: ")


def test_a_json_root_may_use_any_json_whitespace() -> None:
    text = '\t{\r\n"projects"\t:\r\n[ {"name": "a"} ,\n{"name": "b", "_last-serial": 2}\t]\r\n}\n'
    assert list(iter_json_projects(io.StringIO(text))) == [("a", None), ("b", 2)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"projects": [', "root index: the JSON ends early"),
        ('{"projects" [', "root index: expected ':', found '['"),
        ('{"projects": {}}', "root index: expected '[', found '{'"),
        ('{"projects": [{"name": "a"} {"name": "b"}]}', "root index: expected ',', found '{'"),
        ('{"meta": {} "projects": []}', "root index: expected ',', found '\"'"),
        ("[]", "root index: expected '{', found '['"),
        ('{"meta": {}}', "root index: no 'projects' list"),
        ('{"projects": [7]}', "root index: a project entry is not {'name': ...}: 7"),
        (
            '{"projects": [{"name": 7}]}',
            "root index: a project entry is not {'name': ...}: {'name': 7}",
        ),
    ],
)
def test_a_broken_json_root_is_refused_saying_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SourceError) as raised:
        list(iter_json_projects(io.StringIO(text)))
    assert str(raised.value) == message


def test_a_project_entry_in_an_error_is_cut_to_a_hundred_characters() -> None:
    entry = '{"nom": "' + "x" * 300 + '"}'
    with pytest.raises(SourceError) as raised:
        list(iter_json_projects(io.StringIO(f'{{"projects": [{entry}]}}')))
    shown = str(raised.value).removeprefix("root index: a project entry is not {'name': ...}: ")
    assert shown == repr({"nom": "x" * 300})[:100]
