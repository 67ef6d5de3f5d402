"""Whether a repository's refs may have moved, known without reading them: inotify, on Linux.

An unpinned read resolves HEAD and its branch: two ref files, eight system calls through
libgit2, a sixth of a warm read's time (benchmarks/). The kernel queues an inotify event when a
ref file is renamed into place, before the writer's rename returns, so a read that finds the
queue empty may answer from the commit it resolved last, and one that finds an event resolves
again. Where inotify is missing or out of instances, every read resolves.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

# <sys/inotify.h>: whatever can put a new file in place or change one.
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_READ_BYTES = 64 * 1024


def _libc() -> ctypes.CDLL | None:
    """Return the C library the interpreter runs on, if it has inotify."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # errno is not read: a failed call returns -1, and that is enough
    return libc if hasattr(libc, "inotify_init1") else None


class RefWatch:
    """The commit unpinned reads resolved last, kept until a file under the ref folders changes."""

    def __init__(self, folders: tuple[Path, ...]) -> None:
        self._folders = folders
        self._libc = _libc()
        # -1 where there is no inotify, or no instance left: every read resolves.
        self._fd = (
            -1 if self._libc is None else self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        )
        self._watching = False
        self._kept: tuple[object, str] | None = None
        self._lock = threading.Lock()
        if self._fd >= 0:
            weakref.finalize(self, os.close, self._fd)

    def served(self, key: object, read: Callable[[], tuple[str, str]]) -> str:
        """Return the commit kept for ``key`` while no ref moved, else ``read()``'s, kept.

        ``read`` returns the served branch and its commit; ``key`` names what chose the branch.
        """
        # Held throughout: another thread's read between this one's drain and keep could take
        # the event that says this one's commit is already stale.
        with self._lock:
            kept = self._kept
            if kept is not None and kept[0] == key and not self._changed():
                return kept[1]
            self._kept = None
            self._watch()  # before reading, so that no change goes unseen
            branch, commit = read()
            # A nested branch's file is in a folder not watched: its reads resolve every time.
            if self._watching and "/" not in branch:
                self._kept = (key, commit)
            return commit

    def _watch(self) -> None:
        if self._libc is None or self._fd < 0 or self._watching:
            return
        watch = self._libc.inotify_add_watch
        self._watching = all(watch(self._fd, os.fsencode(f), _MASK) >= 0 for f in self._folders)

    def _changed(self) -> bool:
        changed = False
        while True:
            try:
                os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                break
            changed = True
        if changed:
            # Any event, the queue's overflow included, means: resolve again. A folder removed
            # and made again took its watch with it: the next read watches the folders again.
            self._watching = False
        return changed
