"""Our simple pages: Accept negotiation, and one PEP 691 page rendered as JSON and as HTML."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.utils import NormalizedName

from metasrv.errors import NotAcceptable
from metasrv.http.documents import encode
from metasrv.http.simplepages import (
    SimpleFile,
    index_page_chunks,
    negotiate,
    project_page,
    render_json,
    render_project_html,
)
from metasrv.index.pages import MIME_HTML, MIME_SIMPLE_HTML, MIME_SIMPLE_JSON

JSON, HTML, SIMPLE_HTML = MIME_SIMPLE_JSON, MIME_HTML, MIME_SIMPLE_HTML


@pytest.mark.parametrize(
    ("accept", "format_param", "chosen"),
    [
        # Equal quality: JSON, then the versioned HTML, then the legacy HTML, whatever the order.
        (f"{HTML}, {SIMPLE_HTML}, {JSON}", None, JSON),
        (f"{HTML}, {SIMPLE_HTML}", None, SIMPLE_HTML),
        (f"{SIMPLE_HTML}, {HTML}", None, SIMPLE_HTML),
        # A higher quality wins over the preference order; the first of equals does not matter.
        (f"{JSON};q=0.5, {SIMPLE_HTML};q=0.6", None, SIMPLE_HTML),
        (f"{JSON} ; q=0.9 , {HTML};q=0.8", None, JSON),
        (f"{JSON};level=1;q=0.4, {HTML};q=0.3", None, JSON),
        (f"{JSON};q=abc, {HTML};q=0.1", None, HTML),
        (f"{HTML};q=1, {JSON}", None, JSON),
        (f"{JSON};q=1, {HTML}", None, JSON),
        (f"{JSON};q==0.5, {HTML};q=0.1", None, HTML),
        (f"{JSON.upper()}", None, JSON),
        ("text/*", None, HTML),
        ("application/*", None, JSON),
        ("application/*;q=0.2, text/*;q=0.3", None, HTML),
        ("image/png, */*;q=0.1", None, HTML),
        (None, f" {JSON.upper()} ", JSON),
        (None, "application/vnd.pypi.simple.latest+json", JSON),
        (None, SIMPLE_HTML, SIMPLE_HTML),
        ("text/html", "application/vnd.pypi.simple.latest+html", SIMPLE_HTML),
    ],
)
def test_negotiation_weighs_quality_then_prefers_json(
    accept: str | None, format_param: str | None, chosen: str
) -> None:
    assert negotiate(accept, format_param) == chosen


@pytest.mark.parametrize(
    ("accept", "format_param", "message"),
    [
        (
            "application/xml",
            None,
            f"none of 'application/xml' is served; ask for {JSON}, {SIMPLE_HTML}, {HTML}",
        ),
        (f"{JSON};q=0, {HTML};q=0", None, "none of"),
        ("*/*;q=0", None, "none of"),
        (None, "text/plain", "unsupported format 'text/plain'"),
        (JSON, "", "unsupported format ''"),
    ],
)
def test_nothing_acceptable_says_what_is_served(
    accept: str | None, format_param: str | None, message: str
) -> None:
    with pytest.raises(NotAcceptable) as raised:
        negotiate(accept, format_param)
    assert raised.value.message.startswith(message)


def simple_file(filename: str, **fields: object) -> SimpleFile:
    defaults: dict[str, object] = {
        "url": f"/files/{filename}",
        "hashes": {"sha256": "ab" * 32},
        "requires_python": None,
        "yanked": False,
        "size": None,
        "upload_time": None,
        "metadata_sha256": None,
    }
    return SimpleFile(filename, **{**defaults, **fields})  # type: ignore[arg-type]


FILES = [
    simple_file(
        "demo-1.0-py3-none-any.whl",
        hashes={"md5": "00", "sha256": "ab" * 32},
        requires_python=">=3.8,<4",
        yanked="bad <build> & more",
        size=1234,
        upload_time="2024-01-02T03:04:05Z",
        metadata_sha256="cd" * 32,
    ),
    simple_file("demo-1.0.tar.gz", yanked=True, hashes={"md5": "00", "blake2b_256": "11"}, size=99),
    simple_file("demo-0.9.zip", hashes={}, url="/files/demo-0.9.zip?x=1&y=2", size=0),
]


def test_a_project_page_is_pep_691_with_pep_700_and_714_fields() -> None:
    page = project_page("demo", ["0.9", "1.0"], FILES)
    assert page == {
        "meta": {"api-version": "1.1"},
        "name": "demo",
        "versions": ["0.9", "1.0"],
        "files": [
            {
                "filename": "demo-1.0-py3-none-any.whl",
                "url": "/files/demo-1.0-py3-none-any.whl",
                "hashes": {"md5": "00", "sha256": "ab" * 32},
                "requires-python": ">=3.8,<4",
                "yanked": "bad <build> & more",
                "size": 1234,
                "upload-time": "2024-01-02T03:04:05Z",
                "core-metadata": {"sha256": "cd" * 32},
                "dist-info-metadata": {"sha256": "cd" * 32},
            },
            {
                "filename": "demo-1.0.tar.gz",
                "url": "/files/demo-1.0.tar.gz",
                "hashes": {"md5": "00", "blake2b_256": "11"},
                "requires-python": None,
                "yanked": True,
                "size": 99,
            },
            {
                "filename": "demo-0.9.zip",
                "url": "/files/demo-0.9.zip?x=1&y=2",
                "hashes": {},
                "requires-python": None,
                "yanked": False,
                "size": 0,
            },
        ],
    }
    assert json.loads(render_json(page)) == page


def test_a_page_with_a_file_of_unknown_size_does_not_claim_pep_700() -> None:
    files = [*FILES, simple_file("demo-0.8.zip")]
    page = project_page("demo", ["0.8", "0.9", "1.0"], files)
    # PEP 700 makes size required at 1.1.
    assert page["meta"] == {"api-version": "1.0"}
    assert 'content="1.0"' in render_project_html(page).decode()


def test_json_is_compact_and_keeps_non_ascii() -> None:
    page = project_page("d\u00e9mo", [], [])
    assert render_json(page) == (
        '{"meta":{"api-version":"1.1"},"name":"d\u00e9mo","versions":[],"files":[]}'.encode()
    )


# Any text a project file can hold: TOML is UTF-8, so it holds no lone surrogate.
TEXT = st.text(st.characters(exclude_categories=["Cs"]))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_json_bytes_are_the_stdlib_compact_form(document: object) -> None:
    # Pinned pages must keep their bytes: these were json.dumps' before orjson rendered them.
    expected = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    assert render_json({"page": document}) == b'{"page":' + expected + b"}"
    assert encode({"page": document}) == b'{"page":' + expected + b"}"


def test_the_html_page_is_pep_503_with_pep_592_658_and_714_attributes() -> None:
    html = render_project_html(project_page("demo <&>", ["0.9", "1.0"], FILES)).decode()
    assert html == (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '<meta name="pypi:repository-version" content="1.1">\n'
        "<title>Links for demo &lt;&amp;&gt;</title>\n</head>\n<body>\n"
        "<h1>Links for demo &lt;&amp;&gt;</h1>\n"
        f'<a href="/files/demo-1.0-py3-none-any.whl#sha256={"ab" * 32}"'
        ' data-requires-python="&gt;=3.8,&lt;4" data-yanked="bad &lt;build&gt; &amp; more"'
        f' data-core-metadata="sha256={"cd" * 32}" data-dist-info-metadata="sha256={"cd" * 32}">'
        "demo-1.0-py3-none-any.whl</a><br/>\n"
        '<a href="/files/demo-1.0.tar.gz#blake2b_256=11" data-yanked="">'
        "demo-1.0.tar.gz</a><br/>\n"
        '<a href="/files/demo-0.9.zip?x=1&amp;y=2">demo-0.9.zip</a><br/>\n'
        "</body>\n</html>\n"
    )


NAMES = {NormalizedName(f"p{i:04d}"): f"P{i:04d}" for i in range(2500)}


def test_the_html_index_lists_every_project_across_chunks_of_a_thousand() -> None:
    chunks = list(index_page_chunks(NAMES, HTML))
    assert len(chunks) == 4  # the head, two full batches, and the rest with the tail
    assert [chunk.count(b"<a ") for chunk in chunks] == [0, 1000, 1000, 500]
    html = b"".join(chunks).decode()
    assert html.startswith(
        '<!DOCTYPE html>\n<html>\n<head>\n<meta name="pypi:repository-version" content="1.1">\n'
        "<title>Simple index</title>\n</head>\n<body>\n"
        '<a href="p0000/">P0000</a><br/>\n<a href="p0001/">P0001</a><br/>\n'
    )
    assert '<a href="p0999/">P0999</a><br/>\n<a href="p1000/">P1000</a><br/>\n' in html
    assert html.endswith(
        '<a href="p2498/">P2498</a><br/>\n<a href="p2499/">P2499</a><br/>\n</body>\n</html>\n'
    )
    assert html.count("<a ") == 2500


def test_the_html_index_escapes_names_and_is_whole_when_empty() -> None:
    names = {NormalizedName("a-b"): "A<B"}
    assert b"".join(index_page_chunks(names, HTML)).endswith(
        b'<body>\n<a href="a-b/">A&lt;B</a><br/>\n</body>\n</html>\n'
    )
    assert b"".join(index_page_chunks({}, HTML)).endswith(b"<body>\n\n</body>\n</html>\n")


def test_the_json_index_lists_every_project_by_name() -> None:
    document = json.loads(b"".join(index_page_chunks(NAMES, JSON)))
    assert document["meta"] == {"api-version": "1.1"}
    assert document["projects"] == [{"name": name} for name in NAMES.values()]
    assert b"".join(index_page_chunks({NormalizedName("x"): "X"}, JSON)) == (
        b'{"meta":{"api-version":"1.1"},"projects":[{"name": "X"}]}'
    )
    assert json.loads(b"".join(index_page_chunks({}, JSON)))["projects"] == []


def test_metadata_not_read_yet_is_announced_without_a_hash() -> None:
    pending = simple_file("demo-2.0-py3-none-any.whl", metadata_pending=True)
    known = simple_file("demo-2.0.tar.gz", metadata_pending=True, metadata_sha256="cd" * 32)
    page = project_page("demo", ["2.0"], [pending, known])
    assert page["files"][0]["core-metadata"] is True
    assert page["files"][0]["dist-info-metadata"] is True
    assert page["files"][1]["core-metadata"] == {"sha256": "cd" * 32}
    html = render_project_html(page).decode()
    assert (
        f'<a href="/files/demo-2.0-py3-none-any.whl#sha256={"ab" * 32}"'
        ' data-core-metadata="true" data-dist-info-metadata="true">'
        "demo-2.0-py3-none-any.whl</a><br/>\n"
    ) in html
    assert f'data-core-metadata="sha256={"cd" * 32}"' in html
