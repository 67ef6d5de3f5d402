"""The simple API's views in-process: files of a folder source, .metadata answers, redirects,
pending metadata, and the wheels an understanding rewrites.

Written for what mutmut showed untested in ``metasrv.http.views``: the end-to-end tests that
cover these paths run ``metasrv serve`` in a subprocess, out of mutmut's sight.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from metasrv.cli.main import main
from metasrv.config import MetaConfig, PullThroughConfig
from metasrv.http.app import create_app
from metasrv.http.fastpath import Served
from metasrv.http.views import Mount, SimpleApi
from metasrv.http.wheelcache import WheelCache
from metasrv.index.pages import MIME_SIMPLE_JSON
from metasrv.model import DistFile, Project, Release
from metasrv.names import core_metadata_path
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import CommitId, Storage
from metasrv.understandings.registry import Understandings
from tests.builders import commit_projects, make_file
from tests.conftest import AsgiClient
from tests.deadlines import poll_until
from tests.distributions import build_sdist, build_wheel
from tests.indexserver import IndexBehaviour, serve_index
from tests.test_fastpath import Connection, get, serving
from tests.test_installers import RELAX
from tests.test_pullthrough import Source, source
from tests.test_understandings import RELAX_CLICK, add_rules, register

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


def test_a_repository_without_a_source_sends_no_local_file(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No source folder is not the server's working folder."""
    config = MetaConfig(source_url=None, pull_through=PullThroughConfig(enabled=False))
    storage.commit("main", {"metasrv.toml": tomlcodec.dumps(config.to_toml())}, "no source")
    monkeypatch.chdir(tmp_path)
    here = tmp_path / "here-1.0-py3-none-any.whl"
    here.write_bytes(b"in the working folder")
    _commit_files(storage, "x", replace(make_file(here.name), url=here.as_uri()))
    client = AsgiClient(create_app(storage.path, offline=True))
    answer = client.get(_listed(client, "x")[here.name])
    assert answer.status_code == 502
    assert answer.json()["error"] == (
        f"{here.as_uri()}: metasrv.toml names no source folder to send it from"
    )


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
    # The page came from a commit that holds the metadata the rule is applied to.
    answered = Catalog(meta).get_project(CommitId(headers["x-metasrv-at"]), "pt-beta")
    selected = [f for r in answered.releases if r.version_text == "1.0" for f in r.files]
    assert selected
    assert not any(f.metadata_pending for f in selected)


def _api(
    storage: Storage,
    tmp_path: Path,
    *,
    pending_metadata: bool = False,
    log: Callable[[str], None] | None = None,
) -> SimpleApi:
    return SimpleApi(
        Catalog(storage),
        Understandings(storage),
        WheelCache(tmp_path / "wheels", log=log),
        pending_metadata=pending_metadata,
    )


def _page_files(api: SimpleApi, mount: Mount, project: str) -> dict[str, dict[str, Any]]:
    page, left_out = asyncio.run(api.project(mount, project))
    assert left_out == 0
    return {entry["filename"]: entry for entry in page["files"]}


def test_a_view_is_immutable_only_when_its_url_names_the_commit_id(
    storage: Storage, tmp_path: Path
) -> None:
    api, commit_id = _api(storage, tmp_path), storage.resolve(None)
    assert api.mount(commit_id, None).immutable
    assert not api.mount("main", None).immutable
    assert not api.mount(None, None).immutable


def test_a_cooldown_views_prefix_keeps_the_root_it_is_mounted_at(
    storage: Storage, tmp_path: Path
) -> None:
    mount = _api(storage, tmp_path).mount(None, None, "/mirror", "7d")
    assert mount.prefix == f"/mirror/at/{storage.resolve(None)}/cooldown/7d"


@pytest.mark.parametrize("pending_metadata", [False, True])
def test_a_pending_wheel_is_offered_for_a_read_on_request_only_with_pull_through(
    storage: Storage, tmp_path: Path, pending_metadata: bool
) -> None:
    wheel, sdist = make_file("late-1.0-py3-none-any.whl", metadata=None), make_file("late-1.0.zip")
    pending_sdist = make_file("late-1.0.tar.gz", metadata=None)
    _commit_files(storage, "late", wheel, sdist, pending_sdist)
    api = _api(storage, tmp_path, pending_metadata=pending_metadata)
    files = _page_files(api, api.mount(None, None), "late")
    # A pending file's .metadata is read from the source on request, which a pinned URL never does.
    prefix = "" if pending_metadata else f"/at/{storage.resolve(None)}"
    assert files[wheel.filename]["url"] == f"{prefix}/files/late/{wheel.filename}"
    assert files[pending_sdist.filename]["url"] == f"{prefix}/files/late/{pending_sdist.filename}"
    assert files[sdist.filename]["url"] == sdist.url
    assert files[wheel.filename].get("core-metadata") is (True if pending_metadata else None)
    assert "core-metadata" not in files[pending_sdist.filename]
    assert {name: entry["size"] for name, entry in files.items()} == {
        listed.filename: listed.size for listed in (wheel, sdist, pending_sdist)
    }


def test_an_unchanged_file_served_here_has_the_data_commits_url_in_an_understandings_view(
    storage: Storage, tmp_path: Path
) -> None:
    register(storage, "pallets", ".", "understandings/pallets")
    stored = replace(
        make_file("x-1.0-py3-none-any.whl"),
        core_metadata_sha256="ab" * 32,
        core_metadata_stored=True,
    )
    _commit_files(storage, "x", stored)
    api = _api(storage, tmp_path)
    files = _page_files(api, api.mount(None, "pallets"), "x")
    url = f"/at/{storage.resolve(None)}/files/x/{stored.filename}"
    assert files[stored.filename]["url"] == url


def test_only_an_understandings_view_with_rules_may_need_pending_metadata_read_first(
    storage: Storage, tmp_path: Path
) -> None:
    register(storage, "pallets", ".", "understandings/pallets")
    add_rules(storage, "understandings/pallets", "late", RELAX_CLICK)
    _commit_files(storage, "late", make_file("late-1.0-py3-none-any.whl", metadata=None))
    api = _api(storage, tmp_path)
    assert api.needs_metadata(api.mount(None, "pallets"), "late")
    assert not api.needs_metadata(api.mount(None, None), "late")
    assert not api.needs_metadata(api.mount(None, "pallets"), "click")  # nothing pending


def test_a_file_the_project_lacks_or_the_view_hides_is_not_found_saying_which(
    client: AsgiClient, storage: Storage
) -> None:
    _commit_files(storage, "x", replace(make_file("x-1.0.zip"), upload_time=None))
    errors = {
        "/files/x/x-2.0.zip": "no file 'x-2.0.zip' of project 'x'",
        "/cooldown/7d/files/x/x-1.0.zip": (
            "'x-1.0.zip' is hidden in this view: no upload time, so not known to be 7d old at the"
            " data commit"
        ),
    }
    for url, error in errors.items():
        answer = client.get(url)
        assert answer.status_code == 404
        assert answer.json()["error"] == error


def test_preparing_rewrites_counts_each_wheel_an_understanding_changes(tmp_path: Path) -> None:
    archives = tmp_path / "archives"
    archives.mkdir()
    build_wheel(archives, "mtsv-alpha", "2.0")
    for name, version in [("mtsv-beta", "1.0"), ("mtsv-gamma", "1.0"), ("mtsv-gamma", "0.9")]:
        build_wheel(archives, name, version, requires_dist=["mtsv-alpha<2"])
    build_sdist(archives, "mtsv-beta", "1.0", requires_dist=["mtsv-alpha<2"])  # served as it is
    with serve_index(archives, IndexBehaviour(pep658=False)) as index:
        assert main(["init", str(tmp_path / "meta"), "--source", index.simple_url]) == 0
        assert main(["sync", "--all", "--repo", str(tmp_path / "meta")]) == 0
        # The first wheel's download waits until released: its rewrite is still under way.
        index.behaviour.faults["/files/mtsv_beta-1.0-py3-none-any.whl"] = ["hold"]
        meta = Storage(tmp_path / "meta")
        # The folder as a registration may spell it, with slashes around; only those go.
        register(meta, "relaxed", ".", "/understandings/XrelaX/")
        add_rules(meta, "understandings/XrelaX", "mtsv-beta", RELAX)
        add_rules(meta, "understandings/XrelaX", "mtsv-gamma", RELAX)  # 1.0 only, not 0.9
        api = _api(meta, tmp_path)
        assert asyncio.run(api.prepare_rewrites()) == 2
        assert asyncio.run(api.prepare_rewrites()) == 0  # the same state: nothing new
        index.release.set()
        poll_until(lambda: index.downloads() == 2, "both rewritten wheels were prepared")


def _relax_dep_of_x(storage: Storage) -> None:
    """Register the understanding ``relaxed``: x 1.0 works with any version of dep."""
    register(storage, "relaxed", ".", "understandings/relaxed")
    relax = {"id": "relax", "versions": "==1.0", "relax": ["dep"], "reason": "works"}
    add_rules(storage, "understandings/relaxed", "x", relax)


def test_an_sdist_an_understanding_changes_is_listed_as_it_is_only_its_metadata_changed(
    storage: Storage, tmp_path: Path
) -> None:
    _relax_dep_of_x(storage)
    sdist = make_file("x-1.0.tar.gz", requires_dist=["dep<2"])
    _commit_files(storage, "x", sdist)
    api = _api(storage, tmp_path)
    mount = api.mount(None, "relaxed")
    listed = _page_files(api, mount, "x")[sdist.filename]
    assert listed["url"] == f"{mount.prefix}/files/x/{sdist.filename}"
    assert listed["hashes"] == sdist.hashes
    metadata = asyncio.run(api.metadata_file(mount, "x", sdist.filename))
    assert isinstance(metadata, bytes)
    assert b"Requires-Dist: dep\n" in metadata
    assert listed["core-metadata"] == {"sha256": hashlib.sha256(metadata).hexdigest()}


def test_a_page_leaves_out_each_wheel_whose_rewrite_failed_and_lists_the_files_after_it(
    storage: Storage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _relax_dep_of_x(storage)
    (tmp_path / "empty").mkdir()
    with serve_index(tmp_path / "empty", IndexBehaviour()) as index:
        # Wheels the index does not have: their rewrites fail, and pages leave them out.
        wheels = [
            replace(
                make_file(filename, requires_dist=["dep<2"]),
                url=index.simple_url.replace("/simple/", f"/files/{filename}"),
            )
            for filename in ["x-1.0-py2-none-any.whl", "x-1.0-py3-none-any.whl"]
        ]
        _commit_files(storage, "x", *wheels, make_file("x-1.0.tar.gz", requires_dist=["dep<2"]))
        lines: list[str] = []
        api = _api(storage, tmp_path, log=lines.append)
        page, left_out = asyncio.run(api.project(api.mount(None, "relaxed"), "x"))
    assert left_out == 2
    assert [entry["filename"] for entry in page["files"]] == ["x-1.0.tar.gz"]
    # Both failed, not still under way: each left its line for the operator.
    assert sorted(lines) == [
        f"rewritten wheel {wheel.filename!r}: {wheel.url}: HTTP 404; left out of pages until "
        "one asks again after 60 s"
        for wheel in wheels
    ]
    del api  # its wheel cache holds the jobs, and they their futures
    gc.collect()  # an unretrieved failure is reported when its future is collected
    assert "never retrieved" not in caplog.text


def test_the_server_logs_a_failed_rewrite(storage: Storage, tmp_path: Path) -> None:
    _relax_dep_of_x(storage)
    (tmp_path / "empty").mkdir()
    with serve_index(tmp_path / "empty", IndexBehaviour()) as index:
        wheel = replace(
            make_file("x-1.0-py3-none-any.whl", requires_dist=["dep<2"]),
            url=index.simple_url.replace("/simple/", "/files/x-1.0-py3-none-any.whl"),
        )
        _commit_files(storage, "x", wheel)
        lines: list[str] = []
        client = AsgiClient(create_app(storage.path, offline=True, log=lines.append))
        page = client.get("/u/relaxed/simple/x/", headers=JSON)
        assert page.json()["files"] == []  # it waited for the rewrite, which failed
    assert f"rewritten wheel {wheel.filename!r}: {wheel.url}: HTTP 404" in "\n".join(lines)
