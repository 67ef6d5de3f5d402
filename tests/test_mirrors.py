"""Mirrors of understandings: remotes that hang or crawl stall nothing; only allowed ones."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from metasrv.http.app import create_app
from metasrv.repo.storage import Storage
from metasrv.understandings.mirrors import is_allowed, origin_url
from tests.builders import allow_repositories
from tests.conftest import AsgiClient, running_server
from tests.deadlines import poll_until
from tests.gitremotes import hung_remote, slow_remote
from tests.test_understandings import CAP_WERKZEUG, RELAX_CLICK, add_rules, register

DEADLINE_SECONDS = 60


def in_thread(
    function: Callable[[], httpx.Response],
) -> tuple[threading.Thread, list[httpx.Response]]:
    """Run a request on a thread; its response lands in the returned list."""
    results: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: results.append(function()), daemon=True)
    thread.start()
    return thread, results


def test_a_remote_that_never_answers_stalls_no_route(storage: Storage, tmp_path: Path) -> None:
    with hung_remote() as remote:
        allow_repositories(storage, "http://127.0.0.1:")
        register(storage, "hung", remote.url, "")
        arguments = ["--repo", str(storage.path), "--mirrors", str(tmp_path / "mirrors")]
        with (
            running_server([*arguments, "--git-timeout", "3"]) as server,
            httpx.Client(base_url=server.url, timeout=DEADLINE_SECONDS) as http,
        ):
            poll_until(lambda: len(remote.held) > 0, "the clone to connect")
            thread, results = in_thread(
                lambda: httpx.get(
                    f"{server.url}/v1/projects/flask/2.0.0?understanding=hung",
                    timeout=DEADLINE_SECONDS,
                )
            )
            # Every other route answers while the clone hangs (5 s: a bound that fails loudly).
            for path in ("/", "/v1/projects/flask", "/simple/flask/", "/v1/understandings"):
                assert http.get(path, timeout=5).status_code == 200
            thread.join(timeout=DEADLINE_SECONDS)
            assert not thread.is_alive()
            assert results[0].status_code == 503
            assert "not mirrored yet" in results[0].json()["error"]

            def timed_out() -> bool:
                error = http.get("/v1/understandings/hung").json()["fetch-error"]
                return error is not None and "timed out after 3 s" in error

            poll_until(timed_out, "the clone's deadline to be reported")


def test_a_slow_remote_is_fetched_off_the_loop_once_for_many_pins(
    storage: Storage, tmp_path: Path
) -> None:
    rules = Storage.init(tmp_path / "rules")
    add_rules(rules, "", "Flask", CAP_WERKZEUG)
    with slow_remote(rules.path, delay=0.2) as remote:
        allow_repositories(storage, "http://127.0.0.1:")
        register(storage, "slow", remote.url, "")
        arguments = ["--repo", str(storage.path), "--mirrors", str(tmp_path / "mirrors")]
        with (
            running_server([*arguments, "--fetch-interval", "3600"]) as server,
            httpx.Client(base_url=server.url, timeout=DEADLINE_SECONDS) as http,
        ):
            head = rules.resolve(None)
            poll_until(
                lambda: http.get("/v1/understandings/slow").json()["head"] == head, "the clone"
            )
            newer = add_rules(rules, "", "Flask", CAP_WERKZEUG, {**RELAX_CLICK, "versions": "<1.2"})
            remote.publish()
            fetches = remote.count("/info/refs")
            url = f"{server.url}/v1/projects/flask/1.1.4?understanding=slow@{newer}"
            pins = [in_thread(lambda: httpx.get(url, timeout=DEADLINE_SECONDS)) for _ in range(3)]
            poll_until(lambda: remote.count("/info/refs") > fetches, "the fetch to start")
            assert http.get("/v1/projects/flask", timeout=10).status_code == 200
            for thread, _ in pins:
                thread.join(timeout=DEADLINE_SECONDS)
                assert not thread.is_alive()
            for _, results in pins:
                assert results[0].status_code == 200
                assert results[0].json()["requires-dist"] == ["Werkzeug<2.0", "click"]
            # Three requests for one unseen commit: one fetch.
            assert remote.count("/info/refs") == fetches + 1


def test_pins_to_unseen_commits_fetch_at_most_once_per_interval(
    storage: Storage, tmp_path: Path
) -> None:
    rules = Storage.init(tmp_path / "rules")
    add_rules(rules, "", "Flask", CAP_WERKZEUG)
    with slow_remote(rules.path, delay=0) as remote:
        allow_repositories(storage, "http://127.0.0.1:")
        register(storage, "slow", remote.url, "")
        app = create_app(storage.path, mirrors=tmp_path / "mirrors", pin_fetch_interval=3600)
        client = AsgiClient(app)
        assert client.get("/v1/projects/flask/2.0.0?understanding=slow").status_code == 200
        newer = add_rules(rules, "", "Flask", CAP_WERKZEUG, {**RELAX_CLICK, "versions": "<1.2"})
        remote.publish()
        fetches = remote.count("/info/refs")
        pinned = client.get(f"/v1/projects/flask/1.1.4?understanding=slow@{newer}")
        assert pinned.json()["requires-dist"] == ["Werkzeug<2.0", "click"]
        assert remote.count("/info/refs") == fetches + 1
        # Random shas cost no fetch until the interval has passed.
        for sha in ("a" * 40, "b" * 40):
            answer = client.get(f"/v1/projects/flask/1.1.4?understanding=slow@{sha}")
            assert answer.status_code == 404
        assert remote.count("/info/refs") == fetches + 1


@pytest.mark.parametrize(
    ("repository", "allow", "allowed"),
    [
        ("https://github.com/pallets/understanding", ("https://",), True),
        ("http://internal-host/rules.git", ("https://",), False),
        ("/srv/rules", ("https://",), False),
        ("file:///etc", ("https://",), False),
        ("git@github.com:pallets/rules.git", ("https://",), False),
        ("ext::sh -c touch% /tmp/pwned", ("https://",), False),
        ("-uhack", ("https://",), False),
        ("https://github.com/pallets/x", ("https://github.com/pallets",), True),
        ("https://github.com/pallets", ("https://github.com/pallets",), True),
        ("https://github.com/pallets-evil/x", ("https://github.com/pallets",), False),
        ("https://github.com.evil.org/x", ("https://github.com",), False),
        ("https://github.com/pallets/../evil/x", ("https://github.com/pallets/",), False),
        ("HTTPS://github.com/x", ("https://",), True),
        ("/srv/rules/audit", ("/srv/rules",), True),
        ("/srv/rules/../secret", ("/srv/rules",), False),
        ("/srv/rules/team/../audit", ("/srv/rules",), True),
        ("/srv/rules-other", ("/srv/rules",), False),
        ("/srv/rules/audit", ("file:///srv/rules/",), True),
        ("-ufoo", ("file:///",), False),
        ("https://github.com/pallets/x y", ("https://",), False),
        ("https://github.com/pallets/x\x01", ("https://",), False),
        ("https://github.com/pallets/..", ("https://github.com/pallets/",), False),
        ("https://github.com/Pallets/r?from=http://x", ("https://github.com/Pallets/",), True),
    ],
)
def test_the_allow_list_admits_only_what_it_names(
    repository: str, allow: tuple[str, ...], allowed: bool
) -> None:
    assert is_allowed(repository, allow) is allowed


@pytest.mark.parametrize("repository", ["{tmp}/secret", "http://127.0.0.1:9/internal.git"])
def test_a_registration_outside_the_allow_list_is_never_cloned(
    storage: Storage, tmp_path: Path, repository: str
) -> None:
    secret = Storage.init(tmp_path / "secret")
    add_rules(secret, "", "Flask", {**CAP_WERKZEUG, "reason": "SECRET-VALUE"})
    register(storage, "audit", repository.format(tmp=tmp_path), "")
    client = AsgiClient(create_app(storage.path, mirrors=tmp_path / "mirrors"))
    answer = client.get("/v1/projects/flask/2.0.0?understanding=audit")
    assert answer.status_code == 403
    assert "[understandings] allow" in answer.json()["error"]
    assert "SECRET-VALUE" not in answer.text
    status = client.get("/v1/understandings/audit").json()
    assert status["head"] is None
    assert "[understandings] allow" in status["fetch-error"]
    assert not (tmp_path / "mirrors" / "audit.git").exists()


def test_a_changed_repository_takes_effect(storage: Storage, tmp_path: Path) -> None:
    first, second = Storage.init(tmp_path / "first"), Storage.init(tmp_path / "second")
    add_rules(first, "", "Flask", CAP_WERKZEUG)
    add_rules(second, "", "Flask", {**RELAX_CLICK, "versions": "<1.2"})
    allow_repositories(storage, str(tmp_path))
    register(storage, "audit", str(tmp_path / "first"), "")
    client = AsgiClient(create_app(storage.path, mirrors=tmp_path / "mirrors"))
    before = client.get("/v1/projects/flask/2.0.0?understanding=audit").json()
    assert before["requires-dist"] == ["Werkzeug<2.1,>=2.0"]
    register(storage, "audit", str(tmp_path / "second"), "")
    after = client.get("/v1/projects/flask/1.1.4?understanding=audit").json()
    assert after["requires-dist"] == ["Werkzeug<2.0", "click"]
    assert after["understandings"] == [{"name": "audit", "commit": second.resolve(None)}]
    described = client.get("/v1/understandings/audit").json()
    assert described["repository"] == str(tmp_path / "second")
    assert described["head"] == second.resolve(None)
    assert origin_url(tmp_path / "mirrors" / "audit.git") == str(tmp_path / "second")


def test_a_corrupt_mirror_folder_is_cloned_anew(storage: Storage, tmp_path: Path) -> None:
    rules = Storage.init(tmp_path / "rules")
    add_rules(rules, "", "Flask", CAP_WERKZEUG)
    allow_repositories(storage, str(tmp_path))
    register(storage, "audit", str(tmp_path / "rules"), "")
    register(storage, "other", str(tmp_path / "rules"), "")
    mirror = tmp_path / "mirrors" / "audit.git"
    mirror.mkdir(parents=True)
    (mirror / "HEAD").write_bytes(b"\x00 left by a crash")
    client = AsgiClient(create_app(storage.path, mirrors=tmp_path / "mirrors"))
    for name in ("audit", "other"):
        answer = client.get(f"/v1/projects/flask/2.0.0?understanding={name}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["requires-dist"] == ["Werkzeug<2.1,>=2.0"]
    assert Storage(mirror).resolve("main") == rules.resolve(None)
    shutil.rmtree(tmp_path / "rules")


def test_a_broken_registration_is_logged_by_the_periodic_refresh(storage: Storage) -> None:
    storage.commit(storage.head_branch(), {"understandings/broken.toml": b"not = [toml"}, "broken")
    arguments = ["--repo", str(storage.path), "--fetch-interval", "0.1"]
    with running_server(arguments) as server:
        line = server.wait_for_line("mirrors: refresh failed")
        assert "broken.toml" in line
        # The server goes on, and so does the refresh: it says so again next round.
        assert httpx.get(f"{server.url}/", timeout=DEADLINE_SECONDS).status_code == 200
        server.lines.remove(line)
        server.wait_for_line("mirrors: refresh failed")
