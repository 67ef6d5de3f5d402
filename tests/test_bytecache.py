"""The body cache stays within its budget, counted as memory, not as body lengths."""

from __future__ import annotations

import tracemalloc

from metasrv.http.bytecache import ByteCache


def test_many_small_entries_stay_within_the_budget_in_real_memory() -> None:
    budget = 2 * 1024 * 1024
    cache = ByteCache(budget)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # The shape of a remembered unknown version: a 40-hex blob id and a short message.
        for index in range(100_000):
            key = ("missing", f"{index:040x}", f"1.0.{index}")
            cache.put(key, f"unknown version '1.0.{index}' of 'flask'".encode())
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.total_bytes <= budget
    assert 0 < len(cache) < 100_000
    assert grown <= budget * 1.1, grown


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = ByteCache(3000)
    cache.put("a", b"x" * 1000)
    cache.put("b", b"y" * 1000)
    assert cache.get("a") is not None
    cache.put("c", b"z" * 1500)
    assert cache.get("b") is None
    assert cache.get("a") == b"x" * 1000
    assert cache.get("c") == b"z" * 1500
