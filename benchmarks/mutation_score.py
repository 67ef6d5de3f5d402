"""Print the mutation score per module from a finished `mutmut run` (read from mutants/)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# mutmut 3's exit codes: 1 and 3 mean a test failed (killed); these mean it hung (also killed).
_KILLED = {1, 3}
_TIMEOUT = {-24, 24, 36, 152, 255}
_SURVIVED = 0
EQUIVALENT_FILE = Path(__file__).with_name("mutmut-equivalent.txt")


def read_equivalent(path: Path) -> set[str]:
    """Return the mutant names listed as equivalent: ``name  # reason`` per line."""
    if not path.exists():
        return set()
    names = set()
    for line in path.read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.add(name)
    return names


def module_rows(mutants: Path, equivalent: set[str]) -> list[tuple[str, int, int, int, list[str]]]:
    """Return (module, mutants, killed, equivalent survivors, other survivors) per module.

    Mutants no test reaches (or not run yet) count as neither killed nor survived.
    """
    rows = []
    for meta in sorted(mutants.glob("metasrv/**/*.py.meta")):
        module = ".".join(meta.relative_to(mutants).with_suffix("").with_suffix("").parts)
        exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        killed = sum(1 for code in exit_codes.values() if code in _KILLED | _TIMEOUT)
        survivors = sorted(name for name, code in exit_codes.items() if code == _SURVIVED)
        listed = [name for name in survivors if name in equivalent]
        others = [name for name in survivors if name not in equivalent]
        rows.append((module, len(exit_codes), killed, len(listed), others))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print a Markdown table; list unexplained survivors with --survivors."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", action="store_true", help="list survivors not equivalent")
    parser.add_argument("--only", default="", help="a regex a module name must match")
    args = parser.parse_args(argv)
    rows = [
        row
        for row in module_rows(args.mutants, read_equivalent(EQUIVALENT_FILE))
        if re.search(args.only, row[0])
    ]
    print(
        "| module | mutants | killed | equivalent | survived | not reached "
        "| score | score without equivalent |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for module, total, killed, listed, others in rows:
        unreached = total - killed - listed - len(others)
        raw = 100 * killed / total if total else 100.0
        adjusted = 100 * killed / (total - listed) if total - listed else 100.0
        print(
            f"| {module} | {total} | {killed} | {listed} | {len(others)} | {unreached} "
            f"| {raw:.1f} % | {adjusted:.1f} % |"
        )
    if args.survivors:
        for _, _, _, _, others in rows:
            for name in others:
                print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
