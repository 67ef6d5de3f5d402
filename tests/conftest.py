"""Fixtures that build real repositories and run the real server."""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from hypothesis import settings

from metasrv.http.app import create_app
from metasrv.http.hotpath import ASGIApp
from metasrv.repo.storage import Storage
from tests.builders import create_meta_repository, make_project
from tests.deadlines import THREAD_DEADLINE_SECONDS

STARTUP_DEADLINE_SECONDS = 30
# Under CI the same examples every run: a red build is reproducible and never a lucky draw.
# The database is off there too, since CI starts from a clean clone and could not reuse it.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")
SIGNATURE = ("metasrv tests", "tests@metasrv.invalid")
# Tests that run the git CLI must not depend on the machine having a git identity.
for variable, value in (
    ("GIT_AUTHOR_NAME", SIGNATURE[0]),
    ("GIT_AUTHOR_EMAIL", SIGNATURE[1]),
    ("GIT_COMMITTER_NAME", SIGNATURE[0]),
    ("GIT_COMMITTER_EMAIL", SIGNATURE[1]),
):
    os.environ.setdefault(variable, value)


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    """Return a meta repository with a small pallets-like family of projects."""
    return create_meta_repository(
        tmp_path / "meta",
        make_project("Flask", {"1.1.4": ["Werkzeug<2.0", "click<8.0"], "2.0.0": ["Werkzeug>=2.0"]}),
        make_project("Werkzeug", ["1.0.1", "2.0.0", "2.0.1"]),
        make_project("click", ["7.1.2", "8.0.0"]),
    )


class AsgiClient:
    """A synchronous client of an ASGI app, through httpx's ASGI transport."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def get(self, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
        """Send one GET and return the response."""
        return self.request("GET", url, headers)

    def request(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """Send one request without a body and return the response."""
        # A page may link files at the source: following one here would ask this app instead.
        assert "://" not in url or url.startswith("http://metasrv.test/"), f"not the app's: {url}"

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://metasrv.test") as c:
                return await c.request(method, url, headers=headers)

        return asyncio.run(send())


@pytest.fixture
def client(storage: Storage) -> AsgiClient:
    """Return an in-process client of the app serving ``storage``."""
    return AsgiClient(create_app(storage.path))


class RunningServer:
    """A real ``metasrv serve`` process on 127.0.0.1, its stderr drained by a thread."""

    def __init__(
        self,
        process: subprocess.Popen[str],
        url: str,
        drain: threading.Thread,
        output: queue.Queue[str | None],
        seen: list[str],
    ) -> None:
        self.process = process
        self.url = url
        self.drain = drain
        self._output = output
        self.lines = seen  # stderr so far, as far as wait_for_line has read it

    def read_all(self) -> list[str]:
        """Return every stderr line, once the server has exited and its stderr is closed."""
        while (line := self._output.get(timeout=THREAD_DEADLINE_SECONDS)) is not None:
            self.lines.append(line)
        self._output.put(None)  # read_all again, or wait_for_line, sees the end too
        return self.lines

    def wait_for_line(self, text: str) -> str:
        """Return the first stderr line containing ``text``, reading up to a deadline."""
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        found = next((line for line in self.lines if text in line), None)
        while found is None and (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._output.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            found = line if text in line else None
        if found is None:
            raise AssertionError(f"no line with {text!r} in {''.join(self.lines)}")
        return found


def start_server(args: list[str], cwd: Path | None = None) -> RunningServer:
    """Start ``metasrv serve`` on a free port and wait until it says where it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "metasrv", "serve", "--port", "0", *args],
        cwd=cwd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    stderr = process.stderr
    assert stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        # A thread, not select(): readline() buffers lines select() would then never report,
        # and a server whose stderr nobody reads blocks once the pipe is full.
        for line in stderr:
            lines.put(line)
        lines.put(None)

    thread = threading.Thread(target=drain, name="metasrv serve stderr", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    seen = []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if "Uvicorn running on " in line:
            url = line.split("Uvicorn running on ", 1)[1].split()[0]
            return RunningServer(process, url, thread, lines, seen)
    _stop(process, thread)
    raise AssertionError(
        f"metasrv serve did not start within {STARTUP_DEADLINE_SECONDS} s: {''.join(seen)}"
    )


def _stop(process: subprocess.Popen[str], drain: threading.Thread) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    drain.join(THREAD_DEADLINE_SECONDS)
    assert not drain.is_alive(), "metasrv serve's stderr stayed open after it exited"
    assert process.stderr is not None
    process.stderr.close()


@contextmanager
def running_server(args: list[str], cwd: Path | None = None) -> Iterator[RunningServer]:
    """Run ``metasrv serve`` for the duration of a block."""
    server = start_server(args, cwd)
    try:
        yield server
    finally:
        _stop(server.process, server.drain)


@pytest.fixture
def served(storage: Storage) -> Iterator[RunningServer]:
    """Run ``metasrv serve --repo`` on ``storage``."""
    with running_server(["--repo", str(storage.path)]) as server:
        yield server
