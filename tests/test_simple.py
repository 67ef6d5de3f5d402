"""The simple API: negotiation, pages, metadata files and rewritten wheels."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest
from packaging.metadata import parse_email

from metasrv.errors import NotAcceptable
from metasrv.http.simplepages import negotiate
from metasrv.http.wheels import rewrite_wheel
from metasrv.index.pages import MIME_HTML, MIME_SIMPLE_HTML, MIME_SIMPLE_JSON
from metasrv.model import CoreMetadata, MetadataStatus, Project, Release
from metasrv.names import core_metadata_path
from metasrv.repo.storage import Storage
from tests.builders import commit_projects, make_file, make_project, project_files
from tests.conftest import AsgiClient
from tests.distributions import build_wheel

JSON, HTML, SIMPLE_HTML = MIME_SIMPLE_JSON, MIME_HTML, MIME_SIMPLE_HTML


@pytest.mark.parametrize(
    ("accept", "format_param", "chosen"),
    [
        (None, None, HTML),
        ("", None, HTML),
        ("*/*", None, HTML),
        (f"*/*;q=0.5, {JSON}", None, JSON),
        ("text/html", None, HTML),
        (f"{JSON}, {SIMPLE_HTML};q=0.2, text/html;q=0.01", None, JSON),
        (f"{JSON};q=0.1, text/html", None, HTML),
        ("application/vnd.pypi.simple.latest+json", None, JSON),
        ("application/vnd.pypi.simple.latest+html", None, SIMPLE_HTML),
        (f"text/html, {JSON}", None, JSON),
        ("text/html", JSON, JSON),
        (None, "text/html", HTML),
    ],
)
def test_negotiation_picks_by_format_then_quality_then_preference(
    accept: str | None, format_param: str | None, chosen: str
) -> None:
    assert negotiate(accept, format_param) == chosen


@pytest.mark.parametrize(
    ("accept", "format_param"),
    [("application/xml", None), (f"{JSON};q=0", None), (None, "application/yaml")],
)
def test_nothing_acceptable_is_406(accept: str | None, format_param: str | None) -> None:
    with pytest.raises(NotAcceptable):
        negotiate(accept, format_param)


PATCHED = CoreMetadata("2.1", ("alpha>=1", 'beta ; extra == "b"'), ">=3.9", ("b",))


def test_a_rewritten_wheel_is_deterministic_and_consistent(tmp_path: Path) -> None:
    original = build_wheel(
        tmp_path, "gamma", "1.0", requires_dist=["alpha<1"], padding=5000
    ).read_bytes()
    first, metadata = rewrite_wheel(original, PATCHED)
    second, _ = rewrite_wheel(original, PATCHED)
    assert first == second
    with (
        zipfile.ZipFile(io.BytesIO(first)) as rewritten,
        zipfile.ZipFile(io.BytesIO(original)) as old,
    ):
        assert rewritten.testzip() is None
        assert rewritten.namelist() == old.namelist()
        new_metadata = rewritten.read("gamma-1.0.dist-info/METADATA")
        assert new_metadata == metadata
        raw, _ = parse_email(new_metadata)
        assert raw["requires_dist"] == ["alpha>=1", 'beta ; extra == "b"']
        assert raw["requires_python"] == ">=3.9"
        assert raw["provides_extra"] == ["b"]
        assert raw["name"] == "gamma"
        record = rewritten.read("gamma-1.0.dist-info/RECORD").decode()
        digest = (
            base64.urlsafe_b64encode(hashlib.sha256(new_metadata).digest()).rstrip(b"=").decode()
        )
        assert f"gamma-1.0.dist-info/METADATA,sha256={digest},{len(new_metadata)}" in record
        for info in old.infolist():
            if info.filename.endswith(("METADATA", "RECORD")):
                assert rewritten.getinfo(info.filename).compress_type == zipfile.ZIP_STORED
                continue
            new_info = rewritten.getinfo(info.filename)
            assert (new_info.compress_type, new_info.compress_size, new_info.CRC) == (
                info.compress_type,
                info.compress_size,
                info.CRC,
            )
            assert rewritten.read(info.filename) == old.read(info.filename)


def test_the_index_page_lists_every_project_as_html_or_json(client: AsgiClient) -> None:
    html = client.get("/simple/")
    assert html.headers["content-type"] == "text/html; charset=utf-8"
    assert html.headers["vary"] == "Accept, Accept-Encoding"
    assert '<a href="flask/">Flask</a>' in html.text
    listing = client.get("/simple/", headers={"Accept": JSON}).json()
    assert listing["meta"] == {"api-version": "1.1"}
    assert [p["name"] for p in listing["projects"]] == ["click", "Flask", "Werkzeug"]


# A METADATA as a real wheel has it: fields metasrv does not model, a description body.
FLASK_METADATA = (
    b"Metadata-Version: 2.1\nName: Flask\nVersion: 2.0.0\nSummary: A simple framework\n"
    b"License: BSD-3-Clause\nClassifier: Framework :: Flask\nRequires-Python: >=3.6\n"
    b"Requires-Dist: Werkzeug>=2.0\n\nFlask\n=====\n\nA long description.\n"
)
FLASK_SDIST_METADATA = FLASK_METADATA.replace(b"Summary:", b"Summary: (sdist)")


def _commit_flask_with_documents(storage: Storage) -> None:
    """Commit Flask: 2.0.0 wheel METADATA stored, its sdist's served by the source, 1.1.4 none."""
    wheel = replace(
        make_file("Flask-2.0.0-py3-none-any.whl", requires_dist=["Werkzeug>=2.0"]),
        core_metadata_sha256=hashlib.sha256(FLASK_METADATA).hexdigest(),
        core_metadata_stored=True,
    )
    sdist = replace(
        make_file("flask-2.0.0.tar.gz", requires_dist=["Werkzeug>=2.0"]),
        core_metadata_sha256=hashlib.sha256(FLASK_SDIST_METADATA).hexdigest(),
    )
    old = make_file("Flask-1.1.4-py3-none-any.whl", requires_dist=["Werkzeug<2.0"])
    flask = Project.create(
        "Flask",
        [Release.from_files("1.1.4", (old,)), Release.from_files("2.0.0", (wheel, sdist))],
    )
    files = project_files(flask)
    assert wheel.core_metadata_sha256 is not None
    files[core_metadata_path(wheel.core_metadata_sha256)] = FLASK_METADATA
    storage.commit(storage.head_branch(), files, "Flask with its METADATA")


def test_a_project_page_links_pinned_files_with_metadata_hashes(
    client: AsgiClient, storage: Storage
) -> None:
    _commit_flask_with_documents(storage)
    sha = storage.resolve(None)
    page = client.get("/simple/flask/", headers={"Accept": JSON})
    assert page.headers["cache-control"] == "public, max-age=10"
    document = page.json()
    assert document["name"] == "flask"
    assert document["versions"] == ["1.1.4", "2.0.0"]
    wheel = document["files"][1]
    assert wheel["url"] == f"/at/{sha}/files/flask/Flask-2.0.0-py3-none-any.whl"
    assert wheel["hashes"] == {
        "sha256": hashlib.sha256(b"Flask-2.0.0-py3-none-any.whl").hexdigest()
    }
    assert wheel["upload-time"] == "2024-01-02T03:04:05Z"
    metadata = client.get(wheel["url"] + ".metadata")
    # PEP 658: the file's own METADATA, byte for byte, and the hash of what is served.
    assert metadata.content == FLASK_METADATA
    assert hashlib.sha256(metadata.content).hexdigest() == wheel["core-metadata"]["sha256"]
    assert wheel["dist-info-metadata"] == wheel["core-metadata"]
    download = client.get(wheel["url"])
    assert download.status_code == 302
    assert download.headers["location"] == "https://files.test/Flask-2.0.0-py3-none-any.whl"


def test_a_file_the_source_serves_as_is_is_linked_there(
    client: AsgiClient, storage: Storage
) -> None:
    _commit_flask_with_documents(storage)
    sha = storage.resolve(None)
    files = client.get("/simple/flask/", headers={"Accept": JSON}).json()["files"]
    sdist = next(f for f in files if f["filename"] == "flask-2.0.0.tar.gz")
    # Its .metadata too is the source's own document: no redirect through this server.
    assert sdist["url"] == "https://files.test/flask-2.0.0.tar.gz"
    assert sdist["core-metadata"] == {"sha256": hashlib.sha256(FLASK_SDIST_METADATA).hexdigest()}
    # A link through this server (an older page's) still leads there.
    answer = client.get(f"/at/{sha}/files/flask/flask-2.0.0.tar.gz.metadata")
    assert answer.status_code == 302
    assert answer.headers["location"] == "https://files.test/flask-2.0.0.tar.gz.metadata"


def test_a_page_linking_any_file_here_is_new_at_each_commit(
    client: AsgiClient, storage: Storage
) -> None:
    # Flask's stored document is served from this repository, its wheel linked pinned: the
    # page names its commit, though the sdist beside it is linked at the source.
    _commit_flask_with_documents(storage)
    before = client.get("/simple/flask/", headers={"Accept": JSON})
    commit_projects(storage, make_project("Werkzeug", ["3.0.0"]))
    validating = {"Accept": JSON, "If-None-Match": before.headers["etag"]}
    after = client.get("/simple/flask/", headers=validating)
    assert after.status_code == 200
    urls = {f["filename"]: f["url"] for f in after.json()["files"]}
    sha = storage.resolve(None)
    assert urls["Flask-2.0.0-py3-none-any.whl"].startswith(f"/at/{sha}/files/")
    assert urls["flask-2.0.0.tar.gz"] == "https://files.test/flask-2.0.0.tar.gz"


def test_a_built_sdist_recorded_without_its_document_is_linked_here_for_its_rendering(
    client: AsgiClient, storage: Storage
) -> None:
    # Its .metadata is rendered from the record: the source has no such document to link to.
    built = replace(
        make_file("oldlib-1.0.tar.gz", requires_dist=["dep"]),
        metadata_status=MetadataStatus.BUILT,
        metadata_built_on="CPython 3.11.7 linux x86_64",
    )
    commit_projects(storage, Project.create("oldlib", [Release.from_files("1.0", (built,))]))
    sha = storage.resolve(None)
    (listed,) = client.get("/simple/oldlib/", headers={"Accept": JSON}).json()["files"]
    assert listed["url"] == f"/at/{sha}/files/oldlib/oldlib-1.0.tar.gz"
    metadata = client.get(listed["url"] + ".metadata")
    raw, _ = parse_email(metadata.content)
    assert (raw["name"], raw["version"], raw["requires_dist"]) == ("oldlib", "1.0", ["dep"])
    assert listed["core-metadata"] == {"sha256": hashlib.sha256(metadata.content).hexdigest()}


def test_only_a_pending_file_the_source_serves_is_listed_with_the_sources_metadata_hash(
    client: AsgiClient, storage: Storage
) -> None:
    declared = "ab" * 32
    pending = replace(
        make_file("late-1.0-py3-none-any.whl", metadata=None),
        metadata_status=MetadataStatus.PENDING,
        core_metadata_sha256=declared,
    )
    # Pending in a folder source: not linked at the source, so its hash is not the page's.
    local = replace(pending, url="file:///index/late-1.0-py3-none-any.whl")
    # Read and failed: no metadata known, whatever hash was recorded.
    failed = replace(pending, metadata_status=MetadataStatus.FETCH_FAILED)
    releases = [Release.from_files("1.0", (f,)) for f in (pending, local, failed)]
    for release in releases:
        commit_projects(storage, Project.create("late", [release]))
        (listed,) = client.get("/simple/late/", headers={"Accept": JSON}).json()["files"]
        stated = listed.get("core-metadata")
        assert (stated == {"sha256": declared}) is (release is releases[0]), listed


def test_a_file_whose_metadata_document_sync_did_not_see_has_no_metadata_file(
    client: AsgiClient, storage: Storage
) -> None:
    _commit_flask_with_documents(storage)
    files = client.get("/simple/flask/", headers={"Accept": JSON}).json()["files"]
    old = next(f for f in files if f["filename"] == "Flask-1.1.4-py3-none-any.whl")
    assert "core-metadata" not in old
    assert "dist-info-metadata" not in old
    sha = storage.resolve(None)
    path = f"/at/{sha}/files/flask/Flask-1.1.4-py3-none-any.whl.metadata"
    assert client.get(path).status_code == 404


def test_a_pinned_page_is_immutable_and_shows_that_commit(
    client: AsgiClient, storage: Storage
) -> None:
    old = storage.resolve(None)
    commit_projects(storage, make_project("Flask", ["3.0"]))
    pinned = client.get(f"/at/{old}/simple/flask/", headers={"Accept": JSON})
    assert pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert pinned.json()["versions"] == ["1.1.4", "2.0.0"]
    assert client.get("/simple/flask/", headers={"Accept": JSON}).json()["versions"] == ["3.0"]


def test_html_project_pages_carry_pep_503_592_658_attributes(
    client: AsgiClient, storage: Storage
) -> None:
    document = b"Metadata-Version: 2.1\nName: Flask\nVersion: 3.0\nRequires-Python: >=3.8\n\n"
    document_sha256 = hashlib.sha256(document).hexdigest()
    files = (
        replace(
            make_file(
                "Flask-3.0-py3-none-any.whl", requires_python=">=3.8", yanked="broken <build>"
            ),
            core_metadata_sha256=document_sha256,
            core_metadata_stored=True,
        ),
        make_file("Flask-3.0.tar.gz", yanked=True, metadata=False),
        make_file("Flask-3.0-py2-none-any.whl"),
    )
    changes = project_files(Project.create("Flask", [Release.from_files("3.0", files)]))
    changes[core_metadata_path(document_sha256)] = document
    sha = storage.commit(storage.head_branch(), changes, "Flask 3.0")
    html = client.get("/simple/flask/").text
    assert "<h1>Links for flask</h1>" in html
    links = {
        line.split(">")[1].split("<")[0]: line
        for line in html.splitlines()
        if line.startswith("<a ")
    }
    url = f"/at/{sha}/files/flask"
    wheel_digest = hashlib.sha256(b"Flask-3.0-py3-none-any.whl").hexdigest()
    # The PEP 658 hash is of the metadata bytes served, which are the wheel's own.
    metadata = client.get(f"{url}/Flask-3.0-py3-none-any.whl.metadata").content
    assert metadata == document
    metadata_hash = f"sha256={hashlib.sha256(metadata).hexdigest()}"
    assert links["Flask-3.0-py3-none-any.whl"] == (
        f'<a href="{url}/Flask-3.0-py3-none-any.whl#sha256={wheel_digest}"'
        ' data-requires-python="&gt;=3.8" data-yanked="broken &lt;build&gt;"'
        f' data-core-metadata="{metadata_hash}" data-dist-info-metadata="{metadata_hash}">'
        "Flask-3.0-py3-none-any.whl</a><br/>"
    )
    assert ' data-yanked=""' in links["Flask-3.0.tar.gz"]
    assert "data-core-metadata" not in links["Flask-3.0.tar.gz"]
    assert "data-requires-python" not in links["Flask-3.0-py2-none-any.whl"]
    assert "data-yanked" not in links["Flask-3.0-py2-none-any.whl"]


@pytest.mark.parametrize(
    ("url", "headers", "status"),
    [
        ("/simple/FLASK/", {}, 301),
        ("/simple/nope/", {}, 404),
        ("/simple/flask/", {"Accept": "application/xml"}, 406),
        ("/simple/flask/?format=application/yaml", {}, 406),
        ("/at/HEAD~1/simple/flask/", {}, 400),
        ("/at/" + "0" * 40 + "/simple/", {}, 404),
        ("/u/nope/simple/flask/", {}, 404),
        ("/simple/flask", {}, 307),
    ],
)
def test_bad_simple_requests_get_the_right_status(
    client: AsgiClient, url: str, headers: dict[str, str], status: int
) -> None:
    assert client.get(url, headers=headers).status_code == status


def test_the_redirect_to_the_normalized_name_keeps_the_query(client: AsgiClient) -> None:
    response = client.get(f"/simple/FLASK/?format={quote(JSON)}")
    assert response.status_code == 301
    assert response.headers["location"] == f"/simple/flask/?format={quote(JSON)}"


@pytest.mark.parametrize(
    "url",
    ["file:///etc/hostname", "ftp://files.test/x-1.0-py3-none-any.whl"],
    ids=["file-outside-the-source", "other-scheme"],
)
def test_a_file_url_that_is_no_file_of_the_source_folder_is_never_served(
    client: AsgiClient, storage: Storage, url: str
) -> None:
    wheel = replace(make_file("x-1.0-py3-none-any.whl"), url=url)
    commit_projects(storage, Project.create("x", [Release.from_files("1.0", (wheel,))]))
    answer = client.get("/simple/x/", headers={"Accept": JSON}).json()
    download = client.get(answer["files"][0]["url"])
    # The source here is an http(s) index: a file:// URL in its data is not read.
    assert download.status_code == 502
    assert download.json()["error"].startswith(url)


def test_a_page_served_again_is_the_same_per_format_and_follows_a_commit(
    client: AsgiClient, storage: Storage
) -> None:
    first = {
        accept: client.get("/simple/flask/", headers={"Accept": accept}) for accept in (JSON, HTML)
    }
    for accept, answer in first.items():
        again = client.get("/simple/flask/", headers={"Accept": accept})
        assert again.content == answer.content
        assert again.headers["etag"] == answer.headers["etag"]
    assert first[JSON].json()["name"] == "flask"
    assert first[HTML].text.startswith("<!DOCTYPE html>")
    commit_projects(storage, make_project("Flask", ["1.0", "9.9"]))
    assert "9.9" in client.get("/simple/flask/", headers={"Accept": JSON}).json()["versions"]
