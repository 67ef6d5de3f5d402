"""Root listings at their edges: the status a source gives, the size caps, a bad serial's name."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from metasrv.errors import SourceError
from metasrv.index.client import MAX_PAGE_BYTES
from metasrv.index.rootindex import iter_json_projects
from tests.distributions import build_wheel
from tests.indexserver import IndexBehaviour, serve_index
from tests.test_rootindex import MEGABYTE, read, serving


def test_a_root_the_source_says_is_not_found_is_a_source_error_naming_the_status(
    tmp_path: Path,
) -> None:
    build_wheel(tmp_path, "alpha", "1.0")
    with (
        serve_index(tmp_path, IndexBehaviour(faults={"/simple/": ["404"]})) as index,
        pytest.raises(SourceError) as raised,
    ):
        read(index.simple_url)
    assert str(raised.value) == f"{index.simple_url}: HTTP 404"


def test_a_root_larger_than_a_project_pages_cap_is_read_whole() -> None:
    # PyPI's root is ~37 MB and grows; a page's 64 MB cap must not apply to it.
    padding = " " * (MEGABYTE // 2)
    page = "".join(f'<a href="/simple/p{n}/">p{n}</a>{padding}' for n in range(130))
    assert len(page) > MAX_PAGE_BYTES
    body = gzip.compress(page.encode(), 1)  # decoded by the client: the cap counts decoded bytes
    headers = {"content-type": "text/html", "content-encoding": "gzip"}
    with serving(body, headers) as url:
        listing = read(url)
    assert listing is not None
    assert list(listing.serials) == [f"p{n}" for n in range(130)]


def test_a_serial_that_is_no_number_is_refused_naming_its_project() -> None:
    text = '{"projects": [{"name": "a", "_last-serial": 1}, {"name": "b", "_last-serial": "x"}]}'
    with pytest.raises(SourceError) as raised:
        list(iter_json_projects(io.StringIO(text)))
    assert str(raised.value) == "root index: 'b': _last-serial must be a serial number, not 'x'"


def test_an_entry_that_begins_a_read_and_runs_past_a_megabyte_is_still_read() -> None:
    # A value is refused only once more than a megabyte of it is buffered, not at a megabyte.
    head = '{"projects": [{"name": "a"}, '
    filler = " " * (MEGABYTE - len(head))  # the first read ends where the long entry begins
    long_name = "b" * (MEGABYTE + 10)
    text = f'{head}{filler}{{"name": "{long_name}"}}]}}'
    assert list(iter_json_projects(io.StringIO(text))) == [("a", None), (long_name, None)]
