"""Bounded caches: encoded response bodies by what they cost in memory; parsed short headers."""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from functools import lru_cache
from typing import TypeVar

from metasrv.lru import WeighedCache

# The ordered dict's slot and links (~50 bytes) and the (body, cost) pair (~90), CPython 3.11.
ENTRY_OVERHEAD_BYTES = 160
T = TypeVar("T")


def entry_cost(key: Hashable, body: bytes) -> int:
    """Return what one entry holds in memory: the body, the key and its parts, the slot."""
    parts = key if isinstance(key, tuple) else ()
    key_bytes = sys.getsizeof(key) + sum(sys.getsizeof(part) for part in parts)
    return sys.getsizeof(body) + key_bytes + ENTRY_OVERHEAD_BYTES


class ByteCache(WeighedCache[Hashable, bytes]):
    """Keep the most recently used bodies whose entries cost at most ``max_bytes`` in all.

    Small entries (a remembered unknown version) cost far more than their body's length, so
    the budget counts the whole entry, not only the bytes. A body over the budget is not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, entry_cost, keep_oversized=False)

    @property
    def total_bytes(self) -> int:
        """Return what the entries kept cost in all."""
        return self.weight


def cached_when_short(
    function: Callable[..., T], max_length: int = 256, max_values: int = 256
) -> Callable[..., T]:
    """Return ``function`` answering again from a cache when its text arguments are short.

    For parsing request headers: clients send a few short values again and again, while a long
    one (any client may send megabytes) is parsed each time and never kept.
    """
    cached = lru_cache(maxsize=max_values)(function)

    def call(*arguments: str | None) -> T:
        if sum(len(argument) for argument in arguments if argument is not None) > max_length:
            return function(*arguments)
        return cached(*arguments)

    return call
