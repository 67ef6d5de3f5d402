"""Pull-through's thread: its loop starts on first use and ends on stop or drop, bounded in time."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import threading

import pytest

from metasrv.index import pullloop
from metasrv.index.pullloop import LoopThread


def _thread_named(name: str) -> threading.Thread:
    return next(thread for thread in threading.enumerate() if thread.name == name)


def _on_loop_thread(seen: list[str], label: str) -> None:
    seen.append(f"{label} on {threading.current_thread().name}")


def test_stop_runs_the_shutdown_then_the_closers_on_the_loop_and_ends_its_thread() -> None:
    seen: list[str] = []
    owner = LoopThread("test-loop")

    async def shutdown() -> None:
        _on_loop_thread(seen, "shutdown")

    async def close() -> None:
        _on_loop_thread(seen, "closer")

    owner.closers.append(close)
    loop = owner.loop()
    assert owner.loop() is loop  # started once
    thread = _thread_named("test-loop")
    owner.stop(shutdown())
    assert seen == ["shutdown on test-loop", "closer on test-loop"]
    assert not thread.is_alive()
    assert loop.is_closed()


def test_stop_before_any_use_starts_nothing_and_runs_nothing() -> None:
    seen: list[str] = []
    owner = LoopThread("never-started")

    async def shutdown() -> None:
        seen.append("shutdown")

    coroutine = shutdown()
    owner.stop(coroutine)
    assert seen == []
    # Closed, so never reported as never awaited.
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    assert all(t.name != "never-started" for t in threading.enumerate())


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bound the thread's start and stop by 1 s, for the tests of what outlasts them."""
    # Not shorter: on a loaded machine the thread's start and a shutdown that does end must fit.
    monkeypatch.setattr(pullloop, "START_DEADLINE_SECONDS", 1.0)


@pytest.mark.usefixtures("short_deadline")
def test_a_shutdown_that_never_ends_fails_stop_after_the_deadline() -> None:
    owner = LoopThread("stuck-shutdown")
    release = asyncio.Event()
    loop = owner.loop()

    async def shutdown() -> None:
        await release.wait()

    with pytest.raises(TimeoutError):
        owner.stop(shutdown())
    loop.call_soon_threadsafe(release.set)
    owner.stop(asyncio.sleep(0))  # still started: this stop ends it


@pytest.mark.usefixtures("short_deadline")
def test_a_loop_that_will_not_end_does_not_hold_stop_past_the_deadline() -> None:
    owner = LoopThread("stuck-loop")
    loop = owner.loop()
    release = threading.Event()

    async def shutdown() -> None:
        # Blocks the loop's thread once the shutdown's result is out, before the loop can stop:
        # two hops, so that the callback delivering the result runs first.
        running = asyncio.get_running_loop()
        running.call_soon(lambda: running.call_soon(release.wait))

    owner.stop(shutdown())
    thread = _thread_named("stuck-loop")
    assert thread.is_alive()  # stop returned without it
    release.set()
    thread.join(60)
    assert loop.is_closed()


def test_drop_ends_the_thread_without_waiting_and_closes_what_it_holds() -> None:
    closed = threading.Event()
    owner = LoopThread("dropped")

    async def close() -> None:
        closed.set()

    owner.closers.append(close)
    owner.loop()
    thread = _thread_named("dropped")
    owner.drop()
    thread.join(60)
    assert closed.is_set()
    assert not thread.is_alive()


def test_a_process_whose_loop_was_never_stopped_still_exits() -> None:
    # An owner gone without stop() or drop() (an app never shut down) must not hold the exit:
    # the thread is a daemon, here (where mutmut sees the call) and in a process of its own.
    owner = LoopThread("daemon")
    owner.loop()
    assert _thread_named("daemon").daemon
    owner.stop(asyncio.sleep(0))
    code = "from metasrv.index.pullloop import LoopThread; LoopThread('left').loop(); print('ok')"
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
