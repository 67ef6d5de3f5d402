"""The simple API's views in-process: files of a folder source, .metadata answers, redirects.

Written for what mutmut showed untested in ``metasrv.http.views``: the end-to-end tests that
cover these paths run ``metasrv serve`` in a subprocess, out of mutmut's sight.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from metasrv.cli.main import main
from metasrv.http.app import create_app
from metasrv.http.fastpath import Served
from metasrv.index.pages import MIME_SIMPLE_JSON
from metasrv.model import DistFile, Project, Release
from metasrv.names import core_metadata_path
from metasrv.repo.storage import Storage
from tests.builders import commit_projects, make_file
from tests.conftest import AsgiClient
from tests.distributions import build_wheel
from tests.test_fastpath import Connection, get, serving
from tests.test_pullthrough import Source, source
from tests.test_understandings import add_rules, register

JSON = {"Accept": MIME_SIMPLE_JSON}
__all__ = ["source"]  # the fixture, shared with the end-to-end pull-through tests


def _listed(client: AsgiClient, project: str) -> dict[str, str]:
    """Return a project page's file URLs by file name."""
    files = client.get(f"/simple/{project}/", headers=JSON).json()["files"]
    return {entry["filename"]: entry["url"] for entry in files}


def _redirect(client: AsgiClient, url: str) -> str:
    """Return where the app redirects a GET of ``url``."""
    answer = client.get(url)
    assert answer.status_code == 302
    return answer.headers["location"]


def _commit_files(storage: Storage, project: str, *files: DistFile) -> None:
    commit_projects(storage, Project.create(project, [Release.from_files("1.0", files)]))


@pytest.mark.parametrize("spelling", ["path", "file URL"])
def test_a_folder_sources_files_are_sent_from_the_folder_and_no_file_outside_it(
    tmp_path: Path, spelling: str
) -> None:
    folder = tmp_path / "bucket"
    folder.mkdir()
    wheel = build_wheel(folder, "mtsv-local", "1.0")
    source = str(folder) if spelling == "path" else folder.as_uri()
    assert main(["init", str(tmp_path / "meta"), "--source", source]) == 0
    assert main(["sync", "--all", "--repo", str(tmp_path / "meta")]) == 0
    client = AsgiClient(create_app(tmp_path / "meta", offline=True))
    (url,) = _listed(client, "mtsv-local").values()
    download = client.get(url)
    assert download.status_code == 200
    assert download.content == wheel.read_bytes()
    secret = tmp_path / "secret-1.0-py3-none-any.whl"
    secret.write_bytes(b"not the source's")
    gone = (folder / "gone-1.0-py3-none-any.whl").as_uri()
    other = "ftp://files.test/other-1.0-py3-none-any.whl"
    errors = {
        secret.as_uri(): f"outside the source folder {folder.resolve()}",
        gone: "the source folder has no such file",
        other: "not an http(s) URL or a file in the source folder",
    }
    expected = {url.rsplit("/", 1)[1]: f"{url}: {error}" for url, error in errors.items()}
    files = [
        replace(make_file(filename), url=url)
        for filename, url in zip(expected, errors, strict=True)
    ]
    _commit_files(Storage(tmp_path / "meta"), "x", *files)
    for filename, url in _listed(client, "x").items():
        answer = client.get(url)
        assert answer.status_code == 502
        assert answer.json()["error"] == expected[filename]


def test_a_file_at_an_http_url_is_a_redirect_there(client: AsgiClient, storage: Storage) -> None:
    plain = replace(make_file("x-1.0-py3-none-any.whl"), url="http://files.test/x.whl")
    _commit_files(storage, "x", plain)
    # The page links it there; a link through this server (an older page's) leads there too.
    assert _listed(client, "x") == {"x-1.0-py3-none-any.whl": "http://files.test/x.whl"}
    pinned = f"/at/{storage.resolve(None)}/files/x/x-1.0-py3-none-any.whl"
    assert _redirect(client, pinned) == "http://files.test/x.whl"


def test_a_pending_files_metadata_is_the_sources_declared_document_or_not_read_yet(
    client: AsgiClient, storage: Storage
) -> None:
    undeclared = make_file("late-1.0-py3-none-any.whl", metadata=None)
    declared = replace(make_file("late-1.0.tar.gz", metadata=None), core_metadata_sha256="ab" * 32)
    _commit_files(storage, "late", undeclared, declared)
    url = f"/at/{storage.resolve(None)}/files/late"
    redirect = _redirect(client, f"{url}/late-1.0.tar.gz.metadata")
    assert redirect == "https://files.test/late-1.0.tar.gz.metadata"
    # Nothing pulls it in this view: no pull-through reads it on request.
    answer = client.get(f"{url}/late-1.0-py3-none-any.whl.metadata")
    assert answer.status_code == 404
    assert answer.json()["error"] == "the metadata of 'late-1.0-py3-none-any.whl' is not read yet"


def test_a_file_without_a_document_or_with_its_document_missing_says_so(
    client: AsgiClient, storage: Storage
) -> None:
    unseen = make_file("x-1.0-py3-none-any.whl")
    lost = replace(
        make_file("x-1.0.tar.gz"), core_metadata_sha256="cd" * 32, core_metadata_stored=True
    )
    _commit_files(storage, "x", unseen, lost)
    sha = storage.resolve(None)
    errors = {
        "x-1.0-py3-none-any.whl": "'x-1.0-py3-none-any.whl' has no metadata file",
        "x-1.0.tar.gz": f"{core_metadata_path('cd' * 32)} is missing from the meta repository",
    }
    for filename, error in errors.items():
        answer = client.get(f"/at/{sha}/files/x/{filename}.metadata")
        assert answer.status_code == 404
        assert answer.json()["error"] == error


def test_a_page_whose_rules_may_select_a_pending_release_reads_its_metadata_first(
    source: Source,
) -> None:
    meta = Storage(source.meta)
    register(meta, "relaxed", ".", "understandings/relaxed")
    relax = {"id": "relax", "versions": "==1.0", "relax": ["pt-alpha"], "reason": "works"}
    add_rules(meta, "understandings/relaxed", "pt-beta", relax)
    app = create_app(source.meta)
    assert isinstance(app, Served)
    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get("/u/relaxed/simple/pt-beta/", f"Accept: {MIME_SIMPLE_JSON}"))
        status, headers, body = connection.response()
        connection.close()
    assert status == 200
    # Pulled with its metadata pending, read before the page: the rule changed the wheel,
    # which is linked in the view (or left out until rewritten), never as the source has it.
    files = json.loads(body)["files"]
    assert all("/u/relaxed" in listed["url"] for listed in files), files
    assert files or headers["etag"].endswith('-without-1"')
