"""Bounded caches: encoded response bodies by what they cost in memory; parsed short headers."""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable
from functools import lru_cache
from typing import TypeVar

# The ordered dict's slot and links (~50 bytes) and the (body, cost) pair (~90), CPython 3.11.
ENTRY_OVERHEAD_BYTES = 160
T = TypeVar("T")


def entry_cost(key: Hashable, body: bytes) -> int:
    """Return what one entry holds in memory: the body, the key and its parts, the slot."""
    parts = key if isinstance(key, tuple) else ()
    key_bytes = sys.getsizeof(key) + sum(sys.getsizeof(part) for part in parts)
    return sys.getsizeof(body) + key_bytes + ENTRY_OVERHEAD_BYTES


class ByteCache:
    """Keep the most recently used bodies whose entries cost at most ``max_bytes`` in all.

    Small entries (a remembered unknown version) cost far more than their body's length, so
    the budget counts the whole entry, not only the bytes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._entries: OrderedDict[Hashable, tuple[bytes, int]] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        """Return the body stored under ``key`` and mark it recently used."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, body: bytes) -> None:
        """Store a body, evicting the least recently used ones beyond the budget."""
        cost = entry_cost(key, body)
        if cost > self.max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.total_bytes -= previous[1]
        self._entries[key] = (body, cost)
        self.total_bytes += cost
        while self.total_bytes > self.max_bytes:
            _, (_, evicted_cost) = self._entries.popitem(last=False)
            self.total_bytes -= evicted_cost

    def __len__(self) -> int:
        return len(self._entries)


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
