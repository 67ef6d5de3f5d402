"""Mirrors of understandings' repositories: cloned and fetched by the git CLI under deadlines.

libgit2 has no network timeouts, and a pygit2 call on a thread cannot be stopped: a remote that
accepts a connection and never answers would hold that thread for good. The git CLI runs in a
process group of its own that is killed at the whole-operation deadline; curl (under git's
http transport) aborts a transfer that makes no progress for the per-read deadline, and ssh
gets a connect timeout. Nothing here prompts: there is no terminal to ask on.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from metasrv.errors import InvalidInput, SourceError
from metasrv.repo.storage import Storage

_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
_TEMPORARY_MARK = ".metasrv-tmp-"
_sequence = count()


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long a remote git operation may take: in all, without progress, to connect."""

    whole_seconds: float = 120.0
    read_seconds: int = 30
    connect_seconds: int = 15
    # How long a request waits for a refresh it needs before answering 503 (it goes on).
    request_wait_seconds: float = 10.0

    @classmethod
    def within(cls, seconds: float) -> Deadlines:
        """Return deadlines that let no remote operation or request wait exceed ``seconds``."""
        default = cls()
        whole = min(default.whole_seconds, seconds)
        return cls(
            whole_seconds=whole,
            read_seconds=max(1, min(default.read_seconds, int(whole))),
            connect_seconds=max(1, min(default.connect_seconds, int(whole))),
            request_wait_seconds=min(default.request_wait_seconds, whole),
        )


@dataclass(slots=True)
class MirrorStatus:
    """When a mirror was last fetched, and the error of the last attempt if it failed."""

    last_fetch: float | None = None
    last_attempt: float | None = None
    error: str | None = None


class Mirrors:
    """Bare mirrors in one folder, refreshed on worker threads, at most one job per mirror.

    A refresh asked for while one runs shares it (coalesced). A failure keeps the last good
    copy and is recorded in ``status``; a folder that is not a readable repository, or that
    was cloned from another URL, is cloned anew beside it and swapped in.
    """

    def __init__(self, folder: Path, deadlines: Deadlines, workers: int = 4) -> None:
        self.folder = folder
        self.deadlines = deadlines
        self.status: dict[str, MirrorStatus] = {}
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="metasrv-mirror")
        self._lock = threading.Lock()
        self._running: dict[str, Future[None]] = {}
        self._handles: dict[str, Storage] = {}
        self._origins: dict[str, str | None] = {}

    def path(self, name: str) -> Path:
        """Return where the mirror of an understanding lives."""
        return self.folder / f"{name}.git"

    def open(self, name: str) -> Storage | None:
        """Return a handle on a mirror, or None when there is no readable one yet."""
        handle = self._handles.get(name)
        if handle is not None:
            return handle
        if not self.path(name).is_dir():
            return None
        try:
            handle = Storage(self.path(name))
        except InvalidInput:
            return None
        return self._handles.setdefault(name, handle)

    def origin(self, name: str) -> str | None:
        """Return the URL a mirror was cloned from (read once, then kept)."""
        if name not in self._origins:
            self._origins[name] = origin_url(self.path(name))
        return self._origins[name]

    def is_refreshing(self, name: str) -> bool:
        """Return whether a clone or fetch of a mirror is running now."""
        running = self._running.get(name)
        return running is not None and not running.done()

    def refresh(self, name: str, url: str, after: Callable[[], None] | None = None) -> Future[None]:
        """Clone or fetch a mirror on a worker thread, then run ``after`` there on success.

        A refresh asked for while one runs joins it.
        """
        with self._lock:
            running = self._running.get(name)
            if running is not None and not running.done():
                return running
            job = self._executor.submit(self._refresh, name, url, after)
            self._running[name] = job
            return job

    def _refresh(self, name: str, url: str, after: Callable[[], None] | None) -> None:
        status = self.status.setdefault(name, MirrorStatus())
        status.last_attempt = time.time()
        self.folder.mkdir(parents=True, exist_ok=True)
        # One git at a time per mirror across `serve --workers` processes: concurrent fetches
        # fail on git's ref locks. A hung holder lets go at its deadline.
        with open(self.folder / f".{name}.lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            self._refresh_locked(name, url, status)
        if status.error is None and after is not None:
            after()

    def _refresh_locked(self, name: str, url: str, status: MirrorStatus) -> None:
        path = self.path(name)
        try:
            if self.open(name) is not None and self.origin(name) == url:
                fetch(url, path, self.deadlines)
            else:
                # New, unreadable (a crash, a disk error) or cloned from a URL no longer registered.
                clone(url, path, self.deadlines)
                self._handles.pop(name, None)
                self._origins[name] = url
        except SourceError as exc:
            status.error = exc.message
            return
        except OSError as exc:  # the file it names: the mirror's, or git's when git is missing
            status.error = f"{exc.filename or path}: {exc.strerror or exc}"
            return
        status.last_fetch, status.error = time.time(), None


def clone(url: str, path: Path, deadlines: Deadlines) -> None:
    """Clone ``url`` as a bare mirror at ``path``, replacing what is there only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}{_TEMPORARY_MARK}*"):
        _remove(stale)  # left by a crash or a killed clone
    temporary = path.with_name(f"{path.name}{_TEMPORARY_MARK}{os.getpid()}-{next(_sequence)}")
    try:
        _run_git(["clone", "--bare", "--quiet", "--", url, str(temporary)], deadlines, url)
        if path.exists():
            trash = path.with_name(f"{path.name}{_TEMPORARY_MARK}old-{next(_sequence)}")
            path.rename(trash)
            temporary.rename(path)
            _remove(trash)
        else:
            temporary.rename(path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _remove(path: Path) -> None:
    """Remove a folder or a file (a file can stand where a mirror belongs), whatever is left."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fetch(url: str, path: Path, deadlines: Deadlines) -> None:
    """Fetch every branch and tag of ``url`` into the mirror at ``path``, pruning the rest."""
    arguments = ["--git-dir", str(path), "fetch", "--quiet", "--prune", "--no-write-fetch-head"]
    _run_git([*arguments, "--", url, *_REFSPECS], deadlines, url)


def origin_url(path: Path) -> str | None:
    """Return the URL a mirror was cloned from, or None when the folder is not a mirror."""
    try:
        completed = subprocess.run(
            ["git", "--git-dir", str(path), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=30,
            env=_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    return completed.stdout.strip() or None if completed.returncode == 0 else None


# What git needs of the server's environment: where it runs, its locale (the Accept-Language a
# forge answers in), the CAs to trust (an internal forge, a TLS-inspecting proxy). Nothing else.
_PASSED = frozenset(
    {
        "PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_MESSAGES",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH",
    }
)  # fmt: skip


def _environment() -> dict[str, str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if key in _PASSED or key.endswith("_PROXY") or key.endswith("_proxy")
    }
    # No prompt for credentials, no system or global hooks reaching in, only these transports.
    environment["GIT_TERMINAL_PROMPT"] = "0"
    environment["GIT_CONFIG_NOSYSTEM"] = "1"
    environment["GIT_ALLOW_PROTOCOL"] = "https:http:ssh:git:file"
    return environment


def _run_git(arguments: list[str], deadlines: Deadlines, url: str) -> None:
    """Run git with the per-read and connect deadlines; kill its process group at the whole one."""
    settings = [
        "-c", "http.lowSpeedLimit=1000",
        "-c", f"http.lowSpeedTime={deadlines.read_seconds}",
        "-c", "http.followRedirects=false",
        "-c", "core.askPass=",
        "-c", "credential.helper=",
        "-c", "protocol.ext.allow=never",
    ]  # fmt: skip
    environment = _environment()
    environment["GIT_SSH_COMMAND"] = (
        f"ssh -o BatchMode=yes -o ConnectTimeout={deadlines.connect_seconds} "
        f"-o ServerAliveInterval={deadlines.read_seconds} -o ServerAliveCountMax=1"
    )
    process = subprocess.Popen(
        ["git", *settings, *arguments],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment,
        start_new_session=True,  # its own process group: git's transport helpers die with it
    )
    started = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=deadlines.whole_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise SourceError(
            f"{url}: git {arguments[0] if arguments[0] != '--git-dir' else arguments[2]} "
            f"timed out after {deadlines.whole_seconds:g} s"
        ) from None
    if process.returncode != 0:
        lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        # git's first "fatal:" line says what failed; advice lines follow it.
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
        reason = (fatal or lines or [f"exit status {process.returncode}"])[0]
        elapsed = time.monotonic() - started
        raise SourceError(f"{url}: {reason} (after {elapsed:.1f} s)")


def git_url(repository: str) -> str:
    """Return what git is given for a registered repository: URLs as they are, paths absolute."""
    if "://" in repository or _is_scp_like(repository):
        return repository
    return str(Path(repository).expanduser().resolve())


def is_allowed(repository: str, allow: tuple[str, ...]) -> bool:
    """Return whether a repository falls under one of the allowed URL or path prefixes."""
    if repository.startswith("-") or any(c.isspace() or ord(c) < 32 for c in repository):
        return False
    if "://" in repository and ("/../" in repository or repository.endswith("/..")):
        return False
    candidate = _comparable(repository)
    for entry in allow:
        prefix = _comparable(entry)
        if candidate == prefix:
            return True
        # A prefix ends at a boundary: https://example.org never admits https://example.org.evil.
        if candidate.startswith(prefix) and (
            prefix.endswith(("/", ":")) or candidate[len(prefix)] == "/"
        ):
            return True
    return False


def _comparable(repository: str) -> str:
    if "://" in repository:
        scheme, _, rest = repository.partition("://")
        return f"{scheme.lower()}://{rest}"
    if _is_scp_like(repository):
        return repository
    return f"file://{git_url(repository)}"


def _is_scp_like(repository: str) -> bool:
    # git's "host:path" ssh syntax: a colon before any slash.
    colon, slash = repository.find(":"), repository.find("/")
    return colon > 0 and (slash < 0 or colon < slash)
