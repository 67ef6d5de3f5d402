"""The body cache stays within its budget in memory; header values are cached only when short."""

from __future__ import annotations

import tracemalloc

import pytest

from metasrv.http.bytecache import ByteCache, cached_when_short


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


def test_a_body_over_the_budget_is_not_kept_and_leaves_the_one_before() -> None:
    cache = ByteCache(3000)
    cache.put("a", b"x" * 1000)
    kept = cache.total_bytes
    cache.put("a", b"y" * 3000)  # over the budget with its entry's overhead
    assert (cache.get("a"), cache.total_bytes) == (b"x" * 1000, kept)


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = ByteCache(3000)
    cache.put("a", b"x" * 1000)
    cache.put("b", b"y" * 1000)
    assert cache.get("a") is not None
    cache.put("c", b"z" * 1500)
    assert cache.get("b") is None
    assert cache.get("a") == b"x" * 1000
    assert cache.get("c") == b"z" * 1500


def test_short_header_values_are_parsed_once_and_long_ones_every_time() -> None:
    parsed: list[tuple[str | None, str | None]] = []

    def parse(value: str | None, other: str | None = None) -> str:
        parsed.append((value, other))
        return f"{value}|{other}"

    cached = cached_when_short(parse, max_length=8)
    assert [cached("gzip", None), cached("gzip", None)] == ["gzip|None", "gzip|None"]
    # 8 characters in all: still short, so parsed once.
    assert [cached("gzip", "json"), cached("gzip", "json")] == ["gzip|json"] * 2
    long_value = "gzip" + " " * 5
    assert [cached(long_value), cached(long_value)] == [f"{long_value}|None"] * 2
    assert parsed == [("gzip", None), ("gzip", "json"), (long_value, None), (long_value, None)]


def test_by_default_values_to_256_characters_and_256_of_them_are_kept() -> None:
    parsed: list[str] = []

    def parse(value: str) -> str:
        parsed.append(value)
        return value

    cached = cached_when_short(parse)
    for value in ["x" * 256, "y" * 257]:
        cached(value)
        cached(value)
    assert parsed == ["x" * 256, "y" * 257, "y" * 257]
    parsed.clear()
    values = [f"{n:03}" for n in range(257)]  # the first is the least recently used
    for value in [*values[1:], values[0], values[2], values[1]]:
        cached(value)
    # values[0] took values[1]'s place; values[2] was still kept.
    assert parsed == [*values[1:], values[0], values[1]]


def test_a_long_key_counts_against_the_budget() -> None:
    cache = ByteCache(5000)
    cache.put("k" * 10_000, b"tiny")  # a body of 4 bytes under a key of 10 kB
    assert len(cache) == 0


def test_a_refused_header_value_is_refused_again() -> None:
    calls: list[str] = []

    def refuse(value: str) -> str:
        calls.append(value)
        raise ValueError(value)

    cached = cached_when_short(refuse)
    for _ in range(2):
        with pytest.raises(ValueError, match="bad"):
            cached("bad")
    assert calls == ["bad", "bad"]
