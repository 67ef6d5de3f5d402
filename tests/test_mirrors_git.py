"""Mirrors driven in-process: git's deadlines, what reaches git from the server, swaps, jobs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pytest

from metasrv.errors import SourceError
from metasrv.repo.storage import Storage
from metasrv.understandings.mirrors import Deadlines, Mirrors, clone, fetch, git_url, origin_url
from tests.deadlines import THREAD_DEADLINE_SECONDS, poll_until
from tests.gitremotes import fixed_remote, hung_remote, slow_remote, tls_remote
from tests.test_understandings import CAP_WERKZEUG, RELAX_CLICK, add_rules

# Short enough to keep the tests fast; every other deadline far away so that this one decides.
WHOLE = Deadlines(whole_seconds=1, read_seconds=30, connect_seconds=30)
READ = Deadlines(whole_seconds=30, read_seconds=1, connect_seconds=30)
CONNECT = Deadlines(whole_seconds=30, read_seconds=30, connect_seconds=1)
FAST = Deadlines(whole_seconds=30, read_seconds=30, connect_seconds=30)


def rules_repository(tmp_path: Path, name: str = "rules") -> Path:
    """Create a repository of rule files; return its folder, which git clones as it is."""
    add_rules(Storage.init(tmp_path / name), "", "Flask", CAP_WERKZEUG)
    return tmp_path / name


def head(repository: Path) -> str:
    """Return the commit ``main`` names in a repository or a mirror."""
    return str(Storage(repository).resolve("main"))


def failure(call: Callable[[], None]) -> tuple[str, float]:
    """Run a git operation that must fail; return its message and how long the call took."""
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        call()
    return caught.value.message, time.monotonic() - started


def without_elapsed(message: str, took: float) -> str:
    """Check the message's "(after N s)" against the time the call took; return the rest."""
    match = re.fullmatch(r"(.*) \(after (\d+\.\d) s\)", message, re.DOTALL)
    assert match is not None, message
    assert 0 <= float(match[2]) <= took + 0.05
    return match[1]


def finished(job: Future[None]) -> None:
    """Wait for a refresh job, failing loudly if it hangs or raised."""
    assert job.result(timeout=THREAD_DEADLINE_SECONDS) is None


@pytest.mark.parametrize(
    ("seconds", "whole", "read", "connect", "request_wait"),
    [
        (0.5, 0.5, 1, 1, 0.5),
        (3, 3, 3, 3, 3),
        (12.7, 12.7, 12, 12, 10),
        (20, 20, 20, 15, 10),
        (45, 45, 30, 15, 10),
        (600, 120, 30, 15, 10),
    ],
)
def test_git_timeout_bounds_every_wait_and_keeps_the_shorter_defaults(
    seconds: float, whole: float, read: int, connect: int, request_wait: float
) -> None:
    assert Deadlines.within(seconds) == Deadlines(whole, read, connect, request_wait)


@pytest.mark.parametrize("operation", ["clone", "fetch"])
def test_a_git_past_its_whole_deadline_is_killed_and_leaves_no_clone_behind(
    tmp_path: Path, operation: str
) -> None:
    mirror = tmp_path / "mirrors" / "audit.git"
    if operation == "fetch":
        clone(str(rules_repository(tmp_path)), mirror, FAST)
    with hung_remote() as remote:
        run = clone if operation == "clone" else fetch
        message, _ = failure(lambda: run(remote.url, mirror, WHOLE))
    assert message == f"{remote.url}: git {operation} timed out after 1 s"
    expected = [] if operation == "clone" else [mirror]
    assert sorted((tmp_path / "mirrors").iterdir()) == expected


def test_a_remote_that_stops_sending_fails_at_the_read_deadline(tmp_path: Path) -> None:
    with hung_remote() as remote:
        message, took = failure(lambda: clone(remote.url, tmp_path / "audit.git", READ))
    assert without_elapsed(message, took) == (
        f"{remote.url}: fatal: unable to access '{remote.url}/': Operation too slow. "
        "Less than 1000 bytes/sec transferred the last 1 seconds"
    )


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_an_ssh_remote_that_never_answers_fails_at_the_connect_deadline(tmp_path: Path) -> None:
    with hung_remote() as remote:
        url = remote.url.replace("http://", "ssh://")
        message, took = failure(lambda: clone(url, tmp_path / "audit.git", CONNECT))
    # ssh's own lines come first; git's fatal line is the reason, the advice after it is not.
    assert without_elapsed(message, took) == f"{url}: fatal: Could not read from remote repository."


def test_the_servers_git_credentials_never_reach_a_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, asked = tmp_path / "home", tmp_path / "asked"
    home.mkdir()
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {asked}\necho operator-secret\n")
    askpass.chmod(0o755)
    helper = f"!f() {{ touch {asked}; echo username=operator; echo password=operator-secret; }}; f"
    (home / ".gitconfig").write_text(
        f'[credential]\n\thelper = "{helper}"\n[core]\n\taskPass = {askpass}\n'
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_ASKPASS", str(askpass))  # set by editors' terminals, for one
    monkeypatch.setenv("SSH_ASKPASS", str(askpass))
    with fixed_remote(401, {"WWW-Authenticate": 'Basic realm="rules"'}) as remote:
        message, took = failure(lambda: clone(remote.url, tmp_path / "audit.git", FAST))
        requests = list(remote.requests)
    host = remote.url.removesuffix("/rules.git")
    assert without_elapsed(message, took) == (
        f"{remote.url}: fatal: could not read Username for '{host}': terminal prompts disabled"
    )
    assert requests
    assert all(authorization is None for _, authorization in requests)
    assert not asked.exists()


def test_the_operators_own_git_settings_apply_to_mirrors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules, home = rules_repository(tmp_path), tmp_path / "home"
    home.mkdir()
    # Say, a public URL served from an internal copy (port 9 is closed: only the copy answers).
    (home / ".gitconfig").write_text(
        f'[url "{rules}"]\n\tinsteadOf = http://127.0.0.1:9/pallets/rules\n'
    )
    monkeypatch.setenv("HOME", str(home))
    clone("http://127.0.0.1:9/pallets/rules", tmp_path / "audit.git", FAST)
    assert head(tmp_path / "audit.git") == head(rules)


@pytest.mark.parametrize("variable", ["http_proxy", "ALL_PROXY"])
def test_a_proxy_in_the_servers_environment_carries_the_fetches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    rules = Storage.init(tmp_path / "rules")
    add_rules(rules, "", "Flask", CAP_WERKZEUG)
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with slow_remote(rules.path, delay=0) as proxy:
        monkeypatch.setenv(variable, proxy.url)
        # Port 9 is closed: only the proxy can answer.
        clone("http://127.0.0.1:9/", tmp_path / "audit.git", FAST)
    assert head(tmp_path / "audit.git") == str(rules.resolve(None))
    assert "http://127.0.0.1:9/info/refs?service=git-upload-pack" in proxy.requests


@pytest.mark.skipif(shutil.which("openssl") is None, reason="makes its CA with openssl")
def test_git_trusts_the_ca_the_servers_environment_names_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An operator behind a TLS-inspecting proxy, or with an internal forge, names its CA to git.
    rules = Storage.init(tmp_path / "rules")
    add_rules(rules, "", "Flask", CAP_WERKZEUG)
    for name in ("GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_SSL_NO_VERIFY"):
        monkeypatch.delenv(name, raising=False)
    with tls_remote(rules.path, tmp_path / "tls") as remote:
        message, _ = failure(lambda: clone(remote.url, tmp_path / "refused.git", FAST))
        assert "certificate" in message.lower()
        monkeypatch.setenv("GIT_SSL_CAINFO", str(tmp_path / "tls" / "ca.pem"))
        clone(remote.url, tmp_path / "audit.git", FAST)
        assert remote.count("/info/refs") == 1  # the refused clone never got past TLS
    assert head(tmp_path / "audit.git") == str(rules.resolve(None))
    assert not (tmp_path / "refused.git").exists()


def test_a_redirect_to_another_server_is_not_followed(tmp_path: Path) -> None:
    rules = Storage.init(tmp_path / "rules")
    add_rules(rules, "", "Flask", CAP_WERKZEUG)
    with slow_remote(rules.path, delay=0) as elsewhere:
        location = f"{elsewhere.url}info/refs?service=git-upload-pack"
        with fixed_remote(302, {"Location": location}) as remote:
            message, took = failure(lambda: clone(remote.url, tmp_path / "audit.git", FAST))
    assert without_elapsed(message, took) == (
        f"{remote.url}: fatal: unable to access '{remote.url}/': "
        "The requested URL returned error: 302"
    )
    assert elsewhere.requests == []


@pytest.mark.parametrize(
    ("url", "transport"),
    [("ftp://127.0.0.1:9/rules.git", "ftp"), ("ext::sh -c touch% {marker}", "ext")],
)
def test_a_transport_outside_the_four_is_refused(tmp_path: Path, url: str, transport: str) -> None:
    marker = tmp_path / "ran"
    url = url.format(marker=marker)
    message, took = failure(lambda: clone(url, tmp_path / "audit.git", FAST))
    assert without_elapsed(message, took) == f"{url}: fatal: transport '{transport}' not allowed"
    assert not marker.exists()


def test_git_settings_in_the_servers_environment_stay_out_of_the_mirrors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules, elsewhere = rules_repository(tmp_path), rules_repository(tmp_path, "elsewhere")
    # What a server started from a git hook or `git -c` inherits.
    monkeypatch.setenv("GIT_DIR", str(elsewhere / ".git"))
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "remote.origin.url")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(elsewhere))
    mirrors = Mirrors(tmp_path / "mirrors", FAST)
    finished(mirrors.refresh("audit", str(rules)))
    assert mirrors.status["audit"].error is None
    assert origin_url(mirrors.path("audit")) == str(rules)


def test_the_hosts_system_wide_git_settings_stay_out_of_the_mirrors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules, elsewhere = rules_repository(tmp_path), rules_repository(tmp_path, "elsewhere")
    add_rules(Storage(elsewhere), "", "Flask", RELAX_CLICK)
    # A git whose system-wide file fetches the registered repository from elsewhere instead. The
    # wrapper names that file as a packager's build names /etc/gitconfig; the host's stays alone.
    system, tools, git = tmp_path / "gitconfig", tmp_path / "tools", shutil.which("git")
    assert git is not None
    system.write_text(f'[url "{elsewhere}"]\n\tinsteadOf = {rules}\n')
    tools.mkdir()
    wrapper = (
        f'#!/bin/sh\nGIT_CONFIG_SYSTEM={shlex.quote(str(system))} exec {shlex.quote(git)} "$@"\n'
    )
    (tools / "git").write_text(wrapper)
    (tools / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    clone(str(rules), tmp_path / "audit.git", FAST)
    assert head(tmp_path / "audit.git") == head(rules)


@pytest.mark.parametrize(
    ("variable", "language"),
    [(None, None), ("LANG", "C, *;q=0.9"), ("LC_ALL", "C, *;q=0.9"), ("LC_MESSAGES", "C, *;q=0.9")],
)
def test_the_servers_locale_tells_an_http_remote_which_language_to_answer_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str | None, language: str | None
) -> None:
    # A forge answers in the Accept-Language git sends, taken from the locale. C.UTF-8 is the one
    # locale every glibc has; git names its language C (git's own messages are not translated).
    for name in ("LANG", "LC_ALL", "LC_MESSAGES", "LANGUAGE"):
        monkeypatch.delenv(name, raising=False)
    if variable is not None:
        monkeypatch.setenv(variable, "C.UTF-8")
    with fixed_remote(404, {}) as remote:
        failure(lambda: clone(remote.url, tmp_path / "audit.git", FAST))
        headers = list(remote.headers)
    assert headers
    assert [request.get("Accept-Language") for request in headers] == [language] * len(headers)


def test_a_fetch_git_refuses_reports_its_first_error_line_even_when_not_utf_8(
    tmp_path: Path,
) -> None:
    rules = rules_repository(tmp_path)
    mirror = tmp_path / "audit.git"
    clone(str(rules), mirror, FAST)
    # A crash left a branch (named in Latin-1) broken.
    (mirror / os.fsdecode(b"refs/heads/caf\xe9")).write_text("garbage\n")
    message, took = failure(lambda: fetch(str(rules), mirror, FAST))
    assert without_elapsed(message, took) == (
        f"{rules}: error: cannot lock ref 'refs/heads/caf\ufffd': "
        "unable to resolve reference 'refs/heads/caf\ufffd': reference broken"
    )


def test_a_failed_clone_names_the_repository_and_leaves_the_mirror_as_it_was(
    tmp_path: Path,
) -> None:
    rules, mirror = rules_repository(tmp_path), tmp_path / "mirrors" / "audit.git"
    clone(str(rules), mirror, FAST)
    missing = str(tmp_path / "missing")
    message, took = failure(lambda: clone(missing, mirror, FAST))
    assert without_elapsed(message, took) == (
        f"{missing}: fatal: repository '{missing}' does not exist"
    )
    assert head(mirror) == head(rules)
    assert sorted((tmp_path / "mirrors").iterdir()) == [mirror]


def test_a_clone_creates_missing_parents_and_clears_a_crashed_clones_leftovers(
    tmp_path: Path,
) -> None:
    rules, mirror = rules_repository(tmp_path), tmp_path / "a" / "b" / "audit.git"
    clone(str(rules), mirror, FAST)
    leftover = mirror.with_name("audit.git.metasrv-tmp-4242-0")
    (leftover / "objects").mkdir(parents=True)
    clone(str(rules), mirror, FAST)
    assert sorted(mirror.parent.iterdir()) == [mirror]


def test_a_new_clone_replaces_the_mirror_and_leaves_no_old_copy(tmp_path: Path) -> None:
    first, second = rules_repository(tmp_path), rules_repository(tmp_path, "second")
    add_rules(Storage(second), "", "Flask", RELAX_CLICK)
    mirror = tmp_path / "mirrors" / "audit.git"
    clone(str(first), mirror, FAST)
    clone(str(second), mirror, FAST)
    assert head(mirror) == head(second)
    assert sorted(mirror.parent.iterdir()) == [mirror]


def test_a_file_where_a_mirror_belongs_is_replaced_and_stops_no_later_clone(
    tmp_path: Path,
) -> None:
    rules, mirror = rules_repository(tmp_path), tmp_path / "mirrors" / "audit.git"
    mirror.parent.mkdir()
    mirror.write_text("not a repository\n")
    clone(str(rules), mirror, FAST)
    assert [path.name for path in mirror.parent.iterdir()] == ["audit.git"]
    (mirror.parent / "audit.git.metasrv-tmp-old-99").write_text("a crashed swap's file\n")
    clone(str(rules), mirror, FAST)
    assert head(mirror) == head(rules)
    assert [path.name for path in mirror.parent.iterdir()] == ["audit.git"]


def test_a_link_left_where_a_mirror_was_is_removed_and_what_it_names_kept(
    tmp_path: Path,
) -> None:
    rules, mirror = rules_repository(tmp_path), tmp_path / "mirrors" / "audit.git"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "kept").mkdir(parents=True)
    mirror.parent.mkdir()
    (mirror.parent / "audit.git.metasrv-tmp-old-7").symlink_to(elsewhere)
    clone(str(rules), mirror, FAST)
    assert [path.name for path in mirror.parent.iterdir()] == ["audit.git"]
    assert (elsewhere / "kept").is_dir()


@pytest.mark.parametrize(
    ("repository", "given"),
    [
        ("git@github.com:pallets/rules.git", "git@github.com:pallets/rules.git"),
        ("rules-host:audit.git", "rules-host:audit.git"),
        ("h:audit.git", "h:audit.git"),
        ("rules-host:audit/v2:next", "rules-host:audit/v2:next"),
        ("https://github.com/pallets/rules", "https://github.com/pallets/rules"),
        ("rules/a:b", "{cwd}/rules/a:b"),
        ("rules/a:b/c", "{cwd}/rules/a:b/c"),
        (":audit.git", "{cwd}/:audit.git"),
        ("/srv/../rules:v2", "/rules:v2"),
    ],
)
def test_git_is_given_urls_and_ssh_addresses_as_they_are_and_paths_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repository: str, given: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert git_url(repository) == given.format(cwd=tmp_path.resolve())


def test_refreshes_of_a_mirror_share_one_job_that_says_it_is_running(tmp_path: Path) -> None:
    mirrors = Mirrors(tmp_path / "mirrors", FAST)
    with hung_remote() as remote:
        job = mirrors.refresh("audit", remote.url)
        poll_until(lambda: len(remote.held) == 1, "the clone to connect")
        assert mirrors.is_refreshing("audit")
        assert not mirrors.is_refreshing("other")
        assert mirrors.refresh("audit", remote.url) is job
    finished(job)  # the remote hung up on it
    assert not mirrors.is_refreshing("audit")
    assert len(remote.held) == 1
    error = mirrors.status["audit"].error
    assert error is not None
    assert error.startswith(f"{remote.url}: fatal: ")


def test_at_most_four_mirrors_are_refreshed_at_once(tmp_path: Path) -> None:
    mirrors = Mirrors(tmp_path / "mirrors", FAST)
    with hung_remote() as remote:
        jobs = [mirrors.refresh(f"audit{number}", remote.url) for number in range(5)]
        poll_until(lambda: len(remote.held) >= 4, "four clones to connect")
        assert sum(job.running() for job in jobs) == 4
    for job in jobs:
        finished(job)
    assert len(remote.held) == 4  # the fifth began after the remote had gone


def test_after_runs_on_a_mirror_thread_once_the_refresh_succeeds(tmp_path: Path) -> None:
    rules, mirrors = rules_repository(tmp_path), Mirrors(tmp_path / "a" / "mirrors", FAST)
    threads: list[str] = []
    before = time.time()
    job = mirrors.refresh(
        "audit", str(rules), lambda: threads.append(threading.current_thread().name)
    )
    finished(job)
    status = mirrors.status["audit"]
    assert threads
    assert threads[0].startswith("metasrv-mirror")
    assert status.error is None
    assert status.last_attempt is not None
    assert status.last_fetch is not None
    assert before <= status.last_attempt <= status.last_fetch <= time.time()
    assert head(mirrors.path("audit")) == head(rules)
    finished(mirrors.refresh("audit", str(rules)))  # nothing to run after


def test_after_does_not_run_when_the_refresh_fails(tmp_path: Path) -> None:
    mirrors, missing = Mirrors(tmp_path / "mirrors", FAST), str(tmp_path / "missing")
    ran: list[bool] = []
    before = time.time()
    finished(mirrors.refresh("audit", missing, lambda: ran.append(True)))
    status = mirrors.status["audit"]
    assert ran == []
    assert status.error is not None
    assert status.error.startswith(f"{missing}: fatal: repository '{missing}' does not exist")
    assert status.last_fetch is None
    assert status.last_attempt is not None
    assert before <= status.last_attempt <= time.time()


def test_git_missing_from_the_path_is_reported_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules, no_tools = rules_repository(tmp_path), tmp_path / "no-tools"
    no_tools.mkdir()
    monkeypatch.setenv("PATH", str(no_tools))
    mirrors = Mirrors(tmp_path / "mirrors", FAST)
    finished(mirrors.refresh("audit", str(rules)))
    assert mirrors.status["audit"].error == "git: No such file or directory"


def test_a_mirror_from_an_earlier_run_is_fetched_not_cloned_again(tmp_path: Path) -> None:
    rules = rules_repository(tmp_path)
    finished(Mirrors(tmp_path / "mirrors", FAST).refresh("audit", str(rules)))
    newer = add_rules(Storage(rules), "", "Flask", RELAX_CLICK)
    mirrors = Mirrors(tmp_path / "mirrors", FAST)  # a restarted server
    folder = mirrors.path("audit").stat().st_ino
    finished(mirrors.refresh("audit", str(rules)))
    assert mirrors.status["audit"].error is None
    assert head(mirrors.path("audit")) == str(newer)
    assert mirrors.path("audit").stat().st_ino == folder  # fetched into, not swapped


def test_a_repository_without_an_origin_in_a_mirrors_place_is_cloned_anew(tmp_path: Path) -> None:
    rules, mirrors = rules_repository(tmp_path), Mirrors(tmp_path / "mirrors", FAST)
    subprocess.run(
        ["git", "init", "--quiet", "--bare", str(mirrors.path("audit"))], check=True, timeout=30
    )
    assert origin_url(mirrors.path("audit")) is None
    finished(mirrors.refresh("audit", str(rules)))
    assert mirrors.status["audit"].error is None
    assert origin_url(mirrors.path("audit")) == str(rules)
    assert head(mirrors.path("audit")) == head(rules)


def test_a_reader_keeps_its_mirror_while_it_is_swapped_then_sees_the_new_one(
    tmp_path: Path,
) -> None:
    first, second = rules_repository(tmp_path), rules_repository(tmp_path, "second")
    newer = add_rules(Storage(second), "", "Flask", RELAX_CLICK)
    mirrors = Mirrors(tmp_path / "mirrors", FAST)
    finished(mirrors.refresh("audit", str(first)))
    handle = mirrors.open("audit")
    assert handle is not None
    # A clone swaps the folder in two renames; between them the path names nothing.
    mirrors.path("audit").rename(tmp_path / "away")
    assert mirrors.open("audit") is handle
    (tmp_path / "away").rename(mirrors.path("audit"))
    finished(mirrors.refresh("audit", str(second)))  # the registration moved: cloned anew
    reopened = mirrors.open("audit")
    assert reopened is not None
    assert reopened is not handle
    assert reopened.resolve("main") == newer
    assert mirrors.origin("audit") == str(second)


def test_a_fetch_follows_rewritten_branches_and_new_tags_and_drops_deleted_branches(
    tmp_path: Path,
) -> None:
    rules, mirror = rules_repository(tmp_path), tmp_path / "audit.git"

    def git(*arguments: str) -> str:
        completed = subprocess.run(
            ["git", "-C", str(rules), *arguments], check=True, capture_output=True, timeout=30
        )
        return completed.stdout.decode().strip()

    git("branch", "old")
    clone(str(rules), mirror, FAST)
    released = git("commit-tree", "main^{tree}", "-m", "released from no branch")
    git("tag", "v1", released)
    git("branch", "-D", "old")
    rewritten = git("commit-tree", "main^{tree}", "-m", "history rewritten")  # no parent
    git("update-ref", "refs/heads/main", rewritten)
    fetch(str(rules), mirror, FAST)
    storage = Storage(mirror)
    assert storage.resolve("main") == rewritten
    assert storage.resolve("v1") == released
    assert storage.branch_commit("old") is None


def test_a_git_killed_from_outside_is_reported_by_its_exit_status(tmp_path: Path) -> None:
    mirrors = Mirrors(tmp_path / "mirrors", FAST)
    with hung_remote() as remote:
        started = time.monotonic()
        job = mirrors.refresh("audit", remote.url)
        poll_until(lambda: len(remote.held) == 1, "the clone to connect")
        (git,) = children_running(remote.url)
        # As an operator's kill or the OOM killer would: git has no last words on stderr.
        os.killpg(git, signal.SIGKILL)
        finished(job)
        took = time.monotonic() - started
    error = mirrors.status["audit"].error
    assert error is not None
    assert without_elapsed(error, took) == f"{remote.url}: exit status -9"


def children_running(argument: str) -> list[int]:
    """Return the pids of this process's children that were given ``argument``."""
    pids: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            arguments = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == os.getpid() and os.fsencode(argument) in arguments:
            pids.append(int(stat.parent.name))
    return pids
