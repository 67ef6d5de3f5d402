"""A least-recently-used cache bounded by its entries' weight (bytes, files), and by count."""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class WeighedCache(Generic[K, V]):
    """Keep the most recently used entries, at most ``max_weight`` in all (and ``max_entries``).

    A count alone does not bound memory when values differ a thousandfold: numpy's parsed
    project is 4,400 files (~5 MB of objects), most projects a few. ``keep_oversized``: an entry
    that alone weighs more than the budget is kept, alone, as what was just made is what is used
    next; otherwise it is not kept at all. Safe across threads: a pull-through's writer hands
    the server's catalog the projects it commits, from the thread that commits them.
    """

    def __init__(
        self,
        max_weight: int,
        weigh: Callable[[K, V], int],
        *,
        max_entries: int = sys.maxsize,
        keep_oversized: bool = True,
    ) -> None:
        self.max_weight = max_weight
        self.max_entries = max_entries
        self.weight = 0
        self._weigh = weigh
        self._keep_oversized = keep_oversized
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """Return the value kept under ``key`` and mark it recently used."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V) -> None:
        """Keep a value, evicting the least recently used entries beyond either bound."""
        weight = self._weigh(key, value)
        if weight > self.max_weight and not self._keep_oversized:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self.weight -= previous[1]
            self._entries[key] = (value, weight)
            self.weight += weight
            while len(self._entries) > self.max_entries or (
                len(self._entries) > 1 and self.weight > self.max_weight
            ):
                _, (_, evicted) = self._entries.popitem(last=False)
                self.weight -= evicted

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries
