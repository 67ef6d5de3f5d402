"""A least-recently-used map of encoded response bodies, bounded by their total size."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class ByteCache:
    """Keep the most recently used bodies whose sizes add up to at most ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        """Return the body stored under ``key`` and mark it recently used."""
        body = self._entries.get(key)
        if body is not None:
            self._entries.move_to_end(key)
        return body

    def put(self, key: Hashable, body: bytes) -> None:
        """Store a body, evicting the least recently used ones beyond the budget."""
        if len(body) > self.max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.total_bytes -= len(previous)
        self._entries[key] = body
        self.total_bytes += len(body)
        while self.total_bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.total_bytes -= len(evicted)

    def __len__(self) -> int:
        return len(self._entries)
