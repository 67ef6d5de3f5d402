"""Pull-through: a real ``metasrv serve`` in front of a local index, with nothing synced."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pygit2
import pytest

from metasrv.cli.main import main
from metasrv.config import MetaConfig, PullThroughConfig
from metasrv.errors import InvalidData
from metasrv.index.pullthrough import PullThrough
from metasrv.names import normalize_name, project_path
from metasrv.repo import tomlcodec
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage
from metasrv.tables import FORMAT_VERSION
from tests.builders import make_project, project_files
from tests.conftest import RunningServer, running_server
from tests.deadlines import BoundedThread, poll_until
from tests.distributions import build_wheel
from tests.indexserver import IndexBehaviour, LocalIndex, serve_index

DEADLINE_SECONDS = 30
JSON = {"accept": "application/vnd.pypi.simple.v1+json"}


@dataclass
class Source:
    archives: Path
    meta: Path
    index: LocalIndex

    def page_requests(self, normalized_name: str) -> int:
        return sum(
            1 for path, _ in list(self.index.requests) if path == f"/simple/{normalized_name}/"
        )

    def commits(self) -> list[pygit2.Commit]:
        repository = pygit2.Repository(str(self.meta))
        return list(repository.walk(repository.head.target))


def build_archives(folder: Path) -> Path:
    folder.mkdir()
    build_wheel(folder, "pt-alpha", "1.0")
    build_wheel(folder, "pt-alpha", "2.0")
    build_wheel(folder, "pt-beta", "1.0", requires_dist=["pt-alpha<2"], requires_python=">=3.8")
    for number in range(12):
        build_wheel(folder, f"pt-many-{number}", "1.0")
    return folder


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    """A local index and a meta repository in front of it that has synced nothing."""
    archives = build_archives(tmp_path / "archives")
    with serve_index(archives) as index:
        assert main(["init", str(tmp_path / "meta"), "--source", index.simple_url]) == 0
        yield Source(archives, tmp_path / "meta", index)


def configure(meta: Path, source_url: str, pull_through: PullThroughConfig) -> None:
    storage = Storage(meta)
    config = MetaConfig(source_url=source_url, pull_through=pull_through)
    storage.commit("main", {"metasrv.toml": tomlcodec.dumps(config.to_toml())}, "configure")


def test_a_first_request_fetches_commits_and_answers_from_that_commit(source: Source) -> None:
    with (
        running_server(["--repo", str(source.meta)]) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        page = http.get("/simple/PT_Alpha/", headers=JSON, follow_redirects=True)
        assert page.status_code == 200
        assert [f["filename"] for f in page.json()["files"]] == [
            "pt_alpha-1.0-py3-none-any.whl",
            "pt_alpha-2.0-py3-none-any.whl",
        ]
        storage = Storage(source.meta)
        at = storage.resolve(page.headers["x-metasrv-at"])
        assert "pt-alpha" in Catalog(storage).list_projects(at)
        assert storage.read(at, _path("pt-alpha")) is not None
        message = next(c.message for c in source.commits() if c.message.startswith("pull-through"))
        assert "pt-alpha (new, 2 files)" in message
        release = http.get("/v1/projects/pt-beta/1.0").json()
        assert release["requires-dist"] == ["pt-alpha<2"]
        assert release["requires-python"] == ">=3.8"
        server.wait_for_line("pull-through pt-beta: 1 files")
        server.wait_for_line("GET /v1/projects/pt-beta/1.0 200")


def _path(name: str) -> str:
    return f"data/{project_path(normalize_name(name))}"


def get_all(server: RunningServer, paths: list[str]) -> list[int]:
    """GET every path at once, each from a thread of its own; return the statuses."""
    results: dict[int, int] = {}

    def fetch(number: int) -> None:
        with httpx.Client(base_url=server.url, timeout=DEADLINE_SECONDS) as http:
            results[number] = http.get(paths[number], headers=JSON).status_code

    threads = [
        BoundedThread(functools.partial(fetch, number), f"GET {path}")
        for number, path in enumerate(paths)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [results[number] for number in range(len(paths))]


def test_concurrent_first_requests_make_one_fetch(source: Source) -> None:
    with running_server(["--repo", str(source.meta), "--quiet"]) as server:
        paths = ["/simple/pt-alpha/", "/v1/projects/pt-alpha", "/v1/projects/pt-alpha/2.0"] * 8
        assert get_all(server, paths) == [200] * len(paths)
        assert source.page_requests("pt-alpha") == 1
    assert not any("GET /" in line or "pull-through" in line for line in server.read_all())


def test_many_first_requests_become_fewer_commits_that_name_what_was_pulled(
    source: Source,
) -> None:
    names = [f"pt-many-{number}" for number in range(12)]
    with running_server(["--repo", str(source.meta), "--quiet"]) as server:
        assert get_all(server, [f"/simple/{name}/" for name in names]) == [200] * len(names)
    pulls = [c.message for c in source.commits() if c.message.startswith("pull-through")]
    for name in names:
        assert sum(f"- {name} (new, 1 files)" in message for message in pulls) == 1


def test_first_pulls_queued_behind_a_commit_land_together(source: Source) -> None:
    names = [f"pt-many-{number}" for number in range(12)]
    pull = PullThrough(source.meta, source.index.simple_url)

    async def pull_all(lock: IO[str]) -> None:
        tasks = [asyncio.create_task(pull.ensure(name)) for name in names]
        deadline = time.monotonic() + DEADLINE_SECONDS
        while pull.queued < len(names):  # every pull waits on the lock another writer holds
            assert time.monotonic() < deadline, f"{pull.queued} pulls queued"
            await asyncio.sleep(0.01)
        fcntl.flock(lock, fcntl.LOCK_UN)
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_SECONDS)

    try:
        with open(Storage(source.meta).path / "metasrv-write.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            asyncio.run(pull_all(lock))
    finally:
        pull.close()
    pulls = [c.message for c in source.commits() if "(new, " in c.message]
    # The commit that was waiting, then everything queued behind it.
    assert len(pulls) <= 2
    assert sorted(
        line for m in pulls for line in m.splitlines() if line.startswith("- ")
    ) == sorted(f"- {name} (new, 1 files)" for name in names)


def test_pinned_reads_and_offline_servers_never_contact_the_source(source: Source) -> None:
    head = Storage(source.meta).resolve(None)
    with (
        running_server(["--repo", str(source.meta)]) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        assert http.get(f"/at/{head}/simple/pt-alpha/").status_code == 404
        assert http.get(f"/v1/projects/pt-alpha?at={head}").status_code == 404
        assert (
            http.get(f"/at/{head}/files/pt-alpha/pt_alpha-1.0-py3-none-any.whl").status_code == 404
        )
    with (
        running_server(["--repo", str(source.meta), "--offline"]) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        assert http.get("/simple/pt-alpha/").status_code == 404
    configure(source.meta, source.index.simple_url, PullThroughConfig(enabled=False))
    with (
        running_server(["--repo", str(source.meta)]) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        assert http.get("/v1/projects/pt-alpha").status_code == 404
    assert source.index.requests == []


def test_a_source_404_is_a_404_remembered_and_invalid_names_never_reach_the_source(
    source: Source,
) -> None:
    with (
        running_server(["--repo", str(source.meta)]) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        for _ in range(3):
            missing = http.get("/simple/pt-nothing/")
            assert missing.status_code == 404
            assert "the source has no project 'pt-nothing'" in missing.json()["error"]
        assert source.page_requests("pt-nothing") == 1
        for name in ("-bad-", "a%20b", "x" * 300):
            assert http.get(f"/v1/projects/{name}").status_code in (400, 404)
    assert all(path.startswith("/simple/pt-nothing/") for path, _ in source.index.requests)


def test_a_source_that_is_down_is_503_for_unknown_and_stale_200_for_known(
    tmp_path: Path,
) -> None:
    archives = build_archives(tmp_path / "archives")
    with serve_index(archives) as index:
        assert main(["init", str(tmp_path / "meta"), "--source", index.simple_url]) == 0
        configure(tmp_path / "meta", index.simple_url, PullThroughConfig(refresh=0))
        with running_server(["--repo", str(tmp_path / "meta")]) as server:
            assert httpx.get(f"{server.url}/simple/pt-alpha/").status_code == 200
            index_url = index.url
    # The index is gone: its port refuses connections.
    with (
        running_server(["--repo", str(tmp_path / "meta")]) as server,
        httpx.Client(base_url=server.url, timeout=DEADLINE_SECONDS) as http,
    ):
        unknown = http.get("/v1/projects/pt-beta")
        assert unknown.status_code == 503
        assert unknown.json()["status"] == 503
        assert index_url.removeprefix("http://") in unknown.json()["error"]
        assert http.get("/simple/pt-alpha/").status_code == 200
        poll_until(
            lambda: "x-metasrv-stale" in http.get("/v1/projects/pt-alpha").headers,
            "a known project's answer says it may be stale",
        )
        known = http.get("/v1/projects/pt-alpha")
        assert known.status_code == 200
        assert "the source failed" in known.headers["x-metasrv-stale"]


def test_a_release_published_after_the_first_pull_appears_after_refresh(source: Source) -> None:
    configure(source.meta, source.index.simple_url, PullThroughConfig(refresh=0))
    with (
        running_server(["--repo", str(source.meta)]) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        versions = http.get("/v1/projects/pt-alpha").json()["versions"]
        assert [v["version"] for v in versions] == ["1.0", "2.0"]
        build_wheel(source.archives, "pt-alpha", "3.0")
        poll_until(
            lambda: (
                "3.0"
                in [v["version"] for v in http.get("/v1/projects/pt-alpha").json()["versions"]]
            ),
            "pt-alpha 3.0 is served",
        )
        assert http.get("/v1/projects/pt-alpha/3.0").status_code == 200


def test_the_first_page_does_not_wait_for_metadata_which_is_read_on_demand(
    source: Source,
) -> None:
    with (
        running_server(["--repo", str(source.meta), "--quiet"]) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        page = http.get("/simple/pt-beta/", headers=JSON).json()
        (entry,) = page["files"]
        assert entry["core-metadata"] is True or "sha256" in entry["core-metadata"]
        # The source serves PEP 658 files: the answer is the source's own, by redirect.
        metadata = http.get(f"/files/pt-beta/{entry['filename']}.metadata", follow_redirects=True)
        assert metadata.status_code == 200
        assert "Requires-Dist: pt-alpha<2" in metadata.text

        def all_read() -> bool:
            head = Storage(source.meta).resolve(None)
            content = Storage(source.meta).read(head, _path("pt-beta"))
            return content is not None and b"pending" not in content

        poll_until(all_read, "pt-beta's metadata is committed")
        page = http.get("/simple/pt-beta/", headers=JSON).json()
        assert "sha256" in page["files"][0]["core-metadata"]


def test_sync_beside_pull_through_loses_neither(source: Source) -> None:
    with running_server(["--repo", str(source.meta), "--quiet"]) as server:

        def pull() -> None:
            with httpx.Client(base_url=server.url, timeout=DEADLINE_SECONDS) as http:
                for number in range(6):
                    assert http.get(f"/simple/pt-many-{number}/").status_code == 200

        thread = BoundedThread(pull, "pull-through")
        thread.start()
        assert main(["sync", "--repo", str(source.meta), "pt-alpha", "pt-beta"]) == 0
        thread.join()
    names = Catalog(Storage(source.meta)).list_projects(Storage(source.meta).resolve(None))
    assert {"pt-alpha", "pt-beta", *(f"pt-many-{n}" for n in range(6))} <= set(names)


def test_show_pulls_a_project_through_unless_offline(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", "--repo", str(source.meta), "--offline", "pt-beta"]) != 0
    assert source.index.requests == []
    assert main(["show", "--repo", str(source.meta), "PT.Beta", "1.0"]) == 0
    shown = capsys.readouterr().out
    assert "pt-alpha<2" in shown
    assert "requires-python: >=3.8" in shown
    assert source.page_requests("pt-beta") == 1


def test_show_offline_reads_the_data_branch_pull_through_commits_to(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(source.meta, source.index.simple_url, PullThroughConfig(branch="pulled"))
    assert main(["show", "--repo", str(source.meta), "pt-beta", "1.0"]) == 0
    capsys.readouterr()
    assert main(["show", "--repo", str(source.meta), "--offline", "pt-beta", "1.0"]) == 0
    assert "pt-alpha<2" in capsys.readouterr().out
    assert source.page_requests("pt-beta") == 1


def test_metadata_read_while_another_pull_commits_lands_with_its_document(tmp_path: Path) -> None:
    archives = build_archives(tmp_path / "archives")
    wheel = "pt_beta-1.0-py3-none-any.whl"
    # No PEP 658 files: the metadata is read from the wheel and its document stored in git.
    behaviour = IndexBehaviour(pep658=False, faults={f"/files/{wheel}": ["hold"]})
    with serve_index(archives, behaviour) as index:
        assert main(["init", str(tmp_path / "meta"), "--source", index.simple_url]) == 0
        with (
            running_server(["--repo", str(tmp_path / "meta"), "--quiet"]) as server,
            httpx.Client(base_url=server.url, timeout=DEADLINE_SECONDS) as http,
        ):
            assert http.get("/simple/pt-beta/", headers=JSON).status_code == 200
            poll_until(
                lambda: any(p == f"/files/{wheel}" for p, _ in index.requests), "the read began"
            )
            # Another pull commits while pt-beta's metadata is being read.
            assert http.get("/simple/pt-alpha/", headers=JSON).status_code == 200
            index.release.set()

            def read() -> bool:
                storage = Storage(tmp_path / "meta")
                content = storage.read(storage.resolve(None), _path("pt-beta"))
                return content is not None and b"pending" not in content

            poll_until(read, "pt-beta's metadata is committed")
            metadata = http.get(f"/files/pt-beta/{wheel}.metadata")
            assert metadata.status_code == 200, metadata.text
            with zipfile.ZipFile(archives / wheel) as archive:
                assert metadata.content == archive.read("pt_beta-1.0.dist-info/METADATA")


@pytest.mark.parametrize("branch", ["a..b", "data/pulled", "-x", "", "Pulled"])
def test_a_data_branch_git_could_not_name_is_refused_in_metasrv_toml(branch: str) -> None:
    document = {"format": FORMAT_VERSION, "pull-through": {"branch": branch}}
    with pytest.raises(InvalidData, match="branch"):
        MetaConfig.from_toml(document, "metasrv.toml")


BETA_WHEEL = "pt_beta-1.0-py3-none-any.whl"


@contextmanager
def pulling_server(
    tmp_path: Path, behaviour: IndexBehaviour
) -> Iterator[tuple[LocalIndex, httpx.Client]]:
    """Serve the archives from an index that behaves so, and metasrv (nothing synced) before it."""
    archives = build_archives(tmp_path / "archives")
    with serve_index(archives, behaviour) as index:
        assert main(["init", str(tmp_path / "meta"), "--source", index.simple_url]) == 0
        with (
            running_server(["--repo", str(tmp_path / "meta"), "--quiet"]) as server,
            httpx.Client(base_url=server.url, timeout=DEADLINE_SECONDS) as http,
        ):
            yield index, http


def test_a_pending_wheel_metadata_is_the_sources_own_by_its_declared_hash(tmp_path: Path) -> None:
    # Were metasrv to read the document before answering, it would meet these failures.
    behaviour = IndexBehaviour(faults={f"/files/{BETA_WHEEL}.metadata": ["500"] * 4})
    with pulling_server(tmp_path, behaviour) as (index, http):
        (entry,) = http.get("/simple/pt-beta/", headers=JSON).json()["files"]
        with zipfile.ZipFile(tmp_path / "archives" / BETA_WHEEL) as archive:
            document = archive.read("pt_beta-1.0.dist-info/METADATA")
        declared = {"sha256": hashlib.sha256(document).hexdigest()}
        assert entry["core-metadata"] == entry["dist-info-metadata"] == declared
        answer = http.get(f"/files/pt-beta/{BETA_WHEEL}.metadata")
        assert answer.status_code == 302
        assert answer.headers["location"] == f"{index.url}/files/{BETA_WHEEL}.metadata"


def test_a_declared_hash_that_is_no_sha256_is_not_passed_on(tmp_path: Path) -> None:
    # An HTML page: a JSON page with such a hash is refused whole at the edge.
    behaviour = IndexBehaviour(json=False, metadata_hash={BETA_WHEEL: "not-a-digest"})
    with pulling_server(tmp_path, behaviour) as (_, http):
        (entry,) = http.get("/simple/pt-beta/", headers=JSON).json()["files"]
        # PEP 714: it exists, its hash unknown until metasrv reads it (and finds it wrong).
        assert entry["core-metadata"] is True
        answer = http.get(f"/files/pt-beta/{BETA_WHEEL}.metadata")
        assert answer.status_code == 404, answer.text


def test_the_data_branch_takes_in_what_is_committed_to_heads_branch_later(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(source.meta, source.index.simple_url, PullThroughConfig(branch="pulled"))
    assert main(["show", "--repo", str(source.meta), "pt-beta"]) == 0
    storage = Storage(source.meta)
    pulled = storage.branch_commit("pulled")
    assert pulled is not None
    # Later, on the contributor's branch: a project of their own and an edit of a pulled one.
    handmade = make_project("pt-handmade", ["1.0"])
    edited = make_project("pt-beta", ["9.0"])
    main_commit = storage.commit("main", project_files(handmade, edited), "by hand")
    assert main_commit is not None
    capsys.readouterr()

    # A new server (here: show) merges them in before it reads, asking the source nothing.
    assert main(["show", "--repo", str(source.meta), "pt-handmade"]) == 0
    assert "pt-handmade" in capsys.readouterr().out
    assert source.page_requests("pt-handmade") == 0
    merge = storage.branch_commit("pulled")
    assert merge is not None
    assert storage.merge_base(merge, main_commit) == main_commit
    assert storage.merge_base(merge, pulled) == pulled
    # Where both changed a file, HEAD's branch wins.
    assert storage.read(merge, _path("pt-beta")) == storage.read(main_commit, _path("pt-beta"))
    # Merged once: with nothing new on HEAD's branch the next pull-through commit is no merge.
    assert main(["show", "--repo", str(source.meta), "pt-alpha"]) == 0
    assert storage.first_parent(storage.resolve("pulled")) == merge
    assert storage.merge_base(storage.resolve("pulled"), main_commit) == main_commit
