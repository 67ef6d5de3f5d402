"""Pull-through's thread: an event loop of its own, ended by its owner's close or when dropped."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

START_DEADLINE_SECONDS = 10.0


class LoopThread:
    """Run an event loop on a daemon thread, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        # Closed before the loop stops, on close() and when the owner is dropped without it:
        # aiohttp's sessions must be closed on the loop they were opened on.
        self.closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()
        self._ending: asyncio.Future[None] | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        """Return the running loop, starting its thread if need be."""
        with self._starting:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    loop.close()

                thread = threading.Thread(target=run, name=self.name, daemon=True)
                thread.start()
                if not ready.wait(START_DEADLINE_SECONDS):
                    raise RuntimeError(f"the {self.name} thread did not start")
                self._loop, self._thread = loop, thread
            return self._loop

    def stop(self, shutdown: Coroutine[Any, Any, None]) -> None:
        """Run ``shutdown`` and the closers on the loop, then end the thread; wait for both."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            shutdown.close()  # never started: nothing to shut down
            return
        future = asyncio.run_coroutine_threadsafe(self._ended(shutdown), loop)
        future.result(timeout=START_DEADLINE_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=START_DEADLINE_SECONDS)
        self._loop = self._thread = None

    def drop(self) -> None:
        """End the thread without waiting: its owner is gone (a ``weakref.finalize`` callback)."""
        loop = self._loop  # None once stop() ended it: its owner, alive then, closed it
        if loop is not None:
            loop.call_soon_threadsafe(self._end_on_loop, loop)

    def _end_on_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ending = asyncio.ensure_future(self._ended(None))
        # Not loop.stop() inside the coroutine: a stopping loop runs no callback scheduled later,
        # and a waiter on the coroutine's result would never hear of it.
        self._ending.add_done_callback(lambda _: loop.stop())

    async def _ended(self, shutdown: Coroutine[Any, Any, None] | None) -> None:
        if shutdown is not None:
            await shutdown
        for close in self.closers:
            await close()
