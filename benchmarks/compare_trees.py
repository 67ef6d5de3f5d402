"""Compare two work trees on pull-through, interleaved, so that both share the machine's noise.

Run: python -m benchmarks.compare_trees OLD NEW [--rounds 10] [--pages 4]
OLD and NEW are work trees (`git worktree add /tmp/old <commit>`). Each round resolves the
30-package set of benchmarks.pull_through against the source (a), then, tree by tree (which
tree goes first alternates), through a new empty repository served by that tree's code: (b)
everything pulled through, (c) the same server warm. Then ``--pages`` first pages of distinct
4,400-file projects through each tree, beside the source's own page. Prints medians and NEW / OLD.
Run it with both trees on one commit first: that ratio is this machine's noise (8-10 % over 15
rounds was seen here), and a difference smaller than it says nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import httpx

from benchmarks.pull_through import build_big_project, empty_metasrv, timed_page
from benchmarks.servers import nginx
from benchmarks.simple_api import build_source, compile_once

BIG_FILES = 4_400


def alternating(trees: list[Path], round_number: int) -> list[Path]:
    """Return the trees in the order a round runs them: which goes first alternates."""
    return trees if round_number % 2 == 0 else trees[::-1]


def compile_rounds(work: Path, trees: list[Path], rounds: int) -> dict[str, list[float]]:
    """Return seconds per figure: "a", then "b" and "c" of each tree ("b OLD", ...)."""
    names = build_source(work / "source", 60)
    requirements = work / "requirements.in"
    requirements.write_text("\n".join(names[:30]) + "\n")
    figures: dict[str, list[float]] = {"a": []}
    with nginx(work / "source") as source:
        source_url = f"{source}/simple/"
        for round_number in range(rounds):
            figures["a"].append(compile_once(requirements, source_url))
            for tree in alternating(trees, round_number):
                with empty_metasrv(work, source_url, tree) as url:
                    for label in ("b", "c"):
                        seconds = compile_once(requirements, f"{url}/simple/")
                        figures.setdefault(f"{label} {tree}", []).append(seconds)
    return figures


def big_page_rounds(
    work: Path, trees: list[Path], rounds: int, pages: int
) -> dict[str, list[float]]:
    """Return seconds per first page of a 4,400-file project: "source", then each tree's."""
    root = work / "big"
    name = build_big_project(root, BIG_FILES)
    page = (root / "simple" / name / "index.json").read_text()
    count = rounds * pages * len(trees)
    for number in range(count):  # a first page each: a new project per request
        folder = root / "simple" / f"{name}{number}"
        folder.mkdir(parents=True)
        (folder / "index.json").write_text(page.replace(f'"{name}"', f'"{name}{number}"'))
    figures: dict[str, list[float]] = {"source": []}
    projects = iter(range(count))
    with nginx(root, json_pages=True) as source, httpx.Client(timeout=120) as client:
        for round_number in range(rounds):
            for tree in alternating(trees, round_number):
                with empty_metasrv(work, f"{source}/simple/", tree) as url:
                    for _ in range(pages):
                        project = f"{name}{next(projects)}"
                        source_page = timed_page(client, f"{source}/simple/{project}/", BIG_FILES)
                        figures["source"].append(source_page)
                        first_page = timed_page(client, f"{url}/simple/{project}/", BIG_FILES)
                        figures.setdefault(f"big {tree}", []).append(first_page)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pages", type=int, default=4, help="big first pages per tree and round")
    args = parser.parse_args()
    trees = [args.old.resolve(), args.new.resolve()]
    if trees[0] == trees[1]:
        # Figures are kept by tree: one folder twice is one set of figures compared to itself.
        parser.error(
            "OLD and NEW are one folder: for the noise, add a second work tree of the commit"
        )
    work = Path(tempfile.mkdtemp())
    try:
        figures = compile_rounds(work, trees, args.rounds)
        figures |= big_page_rounds(work, trees, args.rounds, args.pages)
    finally:
        shutil.rmtree(work)
    medians = {label: statistics.median(values) for label, values in figures.items()}
    for label, median in medians.items():
        print(f"{label}: median {median * 1000:.1f} ms over {len(figures[label])}")
    old, new = trees
    for figure in ("b", "c", "big"):
        ratio = medians[f"{figure} {new}"] / medians[f"{figure} {old}"]
        print(f"({figure}) new / old = {ratio:.3f}")
    for figure in ("b", "c"):
        to_source = [medians[f"{figure} {tree}"] / medians["a"] for tree in trees]
        print(f"({figure})/(a): old {to_source[0]:.2f}x, new {to_source[1]:.2f}x")


if __name__ == "__main__":
    main()
