"""File locks shared by processes serving one repository: one place for the flock calls."""

from __future__ import annotations

import fcntl


def try_lock(descriptor: int) -> bool:
    """Take an exclusive lock on an open file without waiting; return whether it was taken.

    The lock is held until the file is closed (or the process ends).
    """
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
