"""Bound every thread and wait in tests by a deadline that fails loudly instead of hanging."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

# Generous: a loaded CI runner shared by several jobs is slow, but a hang must still end the test.
THREAD_DEADLINE_SECONDS = 60.0
# Every subprocess a test starts is given this long before it counts as hung.
SUBPROCESS_DEADLINE_SECONDS = 300.0


class BoundedThread:
    """A daemon thread whose failure or hang fails the test that started it."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.name = name
        self._target = target
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as error:  # re-raised in the test's own thread by join()
            self._error = error

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def is_alive(self) -> bool:
        """Return whether the thread is still running."""
        return self._thread.is_alive()

    def join(self, seconds: float = THREAD_DEADLINE_SECONDS) -> None:
        """Wait for the thread; fail if it is still running after ``seconds`` or if it raised."""
        self._thread.join(seconds)
        if self._thread.is_alive():
            raise AssertionError(f"thread {self.name!r} still running after {seconds} s")
        if self._error is not None:
            raise AssertionError(f"thread {self.name!r} failed: {self._error!r}") from self._error


def wait_for(event: threading.Event, what: str, seconds: float = THREAD_DEADLINE_SECONDS) -> None:
    """Wait for ``event``; fail naming ``what`` if it is not set within ``seconds``."""
    if not event.wait(seconds):
        raise AssertionError(f"{what} did not happen within {seconds} s")


def poll_until(
    condition: Callable[[], object], what: str, seconds: float = THREAD_DEADLINE_SECONDS
) -> None:
    """Check ``condition`` until it holds; fail naming ``what`` if not within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.02)  # polling a condition, bounded by the deadline


def wait_for_exit(pid: int, what: str, seconds: float = THREAD_DEADLINE_SECONDS) -> None:
    """Wait until a process that is not our child has ended; fail naming ``what`` if not."""

    def ended() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        # A zombie has ended: it waits only for an init to reap it.
        return stat.rpartition(")")[2].split()[0] == "Z"

    poll_until(ended, what, seconds)
