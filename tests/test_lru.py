"""The weighed cache, and the caches of parsed projects that it bounds by files."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from metasrv.lru import WeighedCache
from metasrv.model import Project, Release
from metasrv.repo.catalog import PARSED_PROJECT_CACHE_FILES, Catalog, blob_id_of
from metasrv.repo.projectfile import write_project
from tests.builders import create_meta_repository, make_file, make_project


def _cache(max_entries: int = 3, max_weight: int = 10) -> WeighedCache[str, int]:
    return WeighedCache(max_weight, lambda _, value: value, max_entries=max_entries)


def test_the_least_recently_used_entry_goes_first_by_count() -> None:
    cache = _cache(max_entries=2)
    cache.put("a", 1)
    cache.put("b", 1)
    assert cache.get("a") == 1  # now b is the least recently used
    cache.put("c", 1)
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    assert (len(cache), cache.weight) == (2, 2)


def test_entries_go_until_the_weight_is_within_the_budget() -> None:
    cache = _cache(max_entries=10, max_weight=10)
    for key, weight in [("a", 4), ("b", 3), ("c", 3)]:
        cache.put(key, weight)
    assert cache.weight == 10  # at the budget, nothing goes
    cache.put("d", 4)
    assert ("a" in cache, cache.get("b"), cache.weight) == (False, 3, 10)
    cache.put("e", 7)  # b was read since: c and d go
    assert ("b" in cache, "c" in cache, "d" in cache, cache.weight) == (True, False, False, 10)


def test_the_newest_entry_stays_even_when_it_alone_is_over_the_budget() -> None:
    cache = _cache(max_weight=10)
    cache.put("small", 1)
    cache.put("huge", 50)
    assert (cache.get("huge"), "small" in cache, cache.weight) == (50, False, 50)
    cache.put("next", 1)
    assert ("huge" in cache, cache.weight) == (False, 1)


def test_a_cache_of_no_entries_keeps_none() -> None:
    cache = _cache(max_entries=0)
    cache.put("a", 1)
    assert ("a" in cache, len(cache), cache.weight) == (False, 0, 0)


def test_an_oversized_entry_is_not_kept_when_the_cache_says_so() -> None:
    cache: WeighedCache[str, int] = WeighedCache(10, lambda _, value: value, keep_oversized=False)
    cache.put("a", 4)
    cache.put("a", 11)  # refused whole: the value it had stays
    assert (cache.get("a"), cache.weight) == (4, 4)
    cache.put("b", 10)  # the whole budget is not over it: kept, alone
    assert ("a" in cache, cache.get("b"), cache.weight) == (False, 10, 10)


def test_putting_a_key_again_replaces_its_weight() -> None:
    cache = _cache(max_weight=10)
    cache.put("a", 6)
    cache.put("a", 2)
    cache.put("b", 8)
    assert (cache.get("a"), cache.get("b"), cache.weight, len(cache)) == (2, 8, 10, 2)


@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 6), st.booleans())))
def test_the_cache_is_a_bounded_least_recently_used_map(
    operations: list[tuple[str, int, bool]],
) -> None:
    cache, model = _cache(max_entries=3, max_weight=10), OrderedDict[str, int]()
    for key, value, is_put in operations:
        if not is_put:
            assert cache.get(key) == model.get(key)
            if key in model:
                model.move_to_end(key)
            continue
        cache.put(key, value)
        model.pop(key, None)
        model[key] = value
        while len(model) > 3 or (len(model) > 1 and sum(model.values()) > 10):
            model.popitem(last=False)
        assert cache.weight == sum(model.values())
        assert len(cache) == len(model)


def _with_files(project: Project, count: int) -> Project:
    """Return ``project`` with one release of ``count`` files."""
    files = tuple(make_file(f"{project.name}-1.0-{n}-py3-none-any.whl") for n in range(count))
    return replace(project, releases=(Release.from_files("1.0", files),))


def test_parsed_projects_are_kept_by_their_files_not_only_by_count(tmp_path: Path) -> None:
    # Two projects over the budget of files: the first parsed is read from git again.
    small = [make_project("first", ["1.0"]), make_project("second", ["1.0"])]
    storage = create_meta_repository(tmp_path / "meta", *small)
    head = storage.resolve(None)
    catalog = Catalog(storage)
    half = PARSED_PROJECT_CACHE_FILES // 2 + 1
    large = [_with_files(project, half) for project in small]
    # The writer hands its projects over with their files' bytes: here, the small ones'.
    for project, kept_as in zip(large, small, strict=True):
        catalog.remember(blob_id_of(write_project(kept_as)), project)
    assert catalog.get_project(head, "second") is large[1]
    assert catalog.get_project(head, "first") == small[0]  # parsed again, not kept
    # Small ones are kept by count, as before: many of them, each a file.
    assert catalog.get_project(head, "first") is catalog.get_project(head, "first")
