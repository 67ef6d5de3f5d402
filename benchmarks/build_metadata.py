"""Measure `metasrv build-metadata` on this repository's sample: its dynamic sdists from PyPI.

Run: python -m benchmarks.build_metadata [--limit N | --projects NAME ...] [--compare 10]
Needs network to PyPI (the sdists, and build requirements through the index PyPI serves) and
bubblewrap. Copies the sample's data/ into benchmarks/work/build-sample, builds every dynamic
sdist once to warm the build environments, then again in a fresh copy with those environments
warm, and prints how many built, failures by reason, and the median and p95 seconds per build.
Then compares ``--compare`` built results with ``pip install --dry-run --report`` on the sdist.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName

from metasrv.index.buildrun import BuildOptions, BuildSummary, build_metadata
from metasrv.index.builds import BuildResult
from metasrv.model import DistFile, MetadataStatus
from metasrv.repo.catalog import Catalog
from metasrv.repo.storage import Storage

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
PYPI = "https://pypi.org/simple/"


def copy_sample(destination: Path) -> Storage:
    """Clone this repository (the sample lives in its data/) as a throwaway meta repository."""
    shutil.rmtree(destination, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(HERE.parent), str(destination)], check=True)
    return Storage(destination)


def dynamic_projects(storage: Storage, limit: int | None) -> list[NormalizedName]:
    """Return the projects with dynamic sdists, at most ``limit`` of them."""
    catalog = Catalog(storage)
    head = storage.resolve(None)
    names = [
        name
        for name in sorted(catalog.list_projects(head))
        if any(
            f.metadata_status is MetadataStatus.DYNAMIC
            for r in catalog.get_project(head, name).releases
            for f in r.files
        )
    ]
    return names[:limit] if limit else names


def run(storage: Storage, names: list[NormalizedName]) -> BuildSummary:
    """Build every dynamic sdist of ``names``, printing each as it ends."""

    def progress(filename: str, result: BuildResult) -> None:
        outcome = "built" if result.reason is None else result.reason
        print(f"  {filename}: {outcome} ({result.seconds:.1f} s)", flush=True)

    options = BuildOptions(index_url=PYPI, environments=WORK / "build-envs")
    return build_metadata(storage, names, options, progress)


def report(summary: BuildSummary) -> None:
    """Print what was built, the failures by reason, and time per build."""
    total = summary.built + summary.failed
    print(f"built {summary.built} of {total} ({100 * summary.built / max(total, 1):.0f} %)")
    if summary.seconds:
        ordered = sorted(summary.seconds)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        print(f"per build: median {statistics.median(ordered):.2f} s, p95 {p95:.2f} s")
    for reason, count in summary.reasons.most_common():
        print(f"  {count:5d}  {reason}")


def compare(storage: Storage, count: int) -> None:
    """Compare built Requires-Dist with what pip's own build reports for the same sdists."""
    catalog = Catalog(storage)
    head = storage.resolve(None)
    built: list[tuple[NormalizedName, str, DistFile]] = []
    for name in sorted(catalog.list_projects(head)):
        for release in catalog.get_project(head, name).releases:
            for dist_file in release.files:
                if dist_file.metadata_status is MetadataStatus.BUILT:
                    built.append((name, release.version_text, dist_file))
    # Results with requirements say more; one per project, so ten projects are compared.
    built.sort(key=lambda item: not (item[2].metadata and item[2].metadata.requires_dist))
    built = list({name: (name, version, f) for name, version, f in reversed(built)}.values())
    built = built[:count]
    agree = 0
    for name, version, dist_file in built:
        answer = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--quiet",
                "--report",
                "-",
                "--ignore-installed",
                "--no-deps",
                "--no-binary",
                name,
                "--isolated",
                "--index-url",
                PYPI,
                f"{name}=={version}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=900,
        )
        if answer.returncode != 0:
            print(f"  {dist_file.filename}: pip failed: {answer.stderr.strip().splitlines()[-1:]}")
            continue
        pip_requires = json.loads(answer.stdout)["install"][0]["metadata"].get("requires_dist", [])
        ours = dist_file.metadata.requires_dist if dist_file.metadata else ()
        same = {str(Requirement(r)) for r in pip_requires} == {str(Requirement(r)) for r in ours}
        agree += same
        print(
            f"  {dist_file.filename}: {'same' if same else f'pip {pip_requires} ours {list(ours)}'}"
        )
    print(f"{agree} of {len(built)} agree with pip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, help="at most this many projects")
    parser.add_argument("--projects", nargs="*", default=(), help="only these projects")
    parser.add_argument("--compare", type=int, default=10, help="results to check with pip")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    names = dynamic_projects(copy_sample(WORK / "build-warmup"), args.limit)
    if args.projects:
        names = [name for name in names if name in set(args.projects)]
    print(f"warming build environments: {len(names)} projects")
    run(Storage(WORK / "build-warmup"), names)
    print("measuring with warm environments")
    storage = copy_sample(WORK / "build-sample")
    report(run(storage, names))
    compare(storage, args.compare)


if __name__ == "__main__":
    main()
