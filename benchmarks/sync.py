"""Benchmark `metasrv sync` against a local index served by nginx, and incremental commits.

Run: python -m benchmarks.sync [--projects 2000] [--files 10] [--padding 16384]
Needs nginx (Debian package). Prints projects/s, bytes fetched against the archives' total size,
and the cost of committing 1 % and 0.1 % changed projects into the 100,000-project repository
that benchmarks/read_api.py builds.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

from benchmarks.servers import nginx
from benchmarks.synthetic import build_repository, project_names, synthetic_project
from metasrv.cli.main import main as metasrv
from metasrv.index.client import FetchOptions
from metasrv.index.sync import SyncOptions
from metasrv.index.wholeindex import sync_all
from metasrv.names import project_path
from metasrv.repo.projectfile import write_project
from metasrv.repo.storage import Storage
from tests.distributions import build_wheel

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"


def build_index(root: Path, projects: int, files: int, padding: int) -> int:
    """Write a static PEP 503 tree; half the projects offer PEP 658 files. Return wheel bytes."""
    if (root / ".complete").exists():
        return int((root / ".complete").read_text())
    shutil.rmtree(root, ignore_errors=True)
    (root / "files").mkdir(parents=True)
    total = 0
    names = [f"bench-{index:05d}" for index in range(projects)]
    for index, name in enumerate(names):
        anchors = []
        for file_number in range(files):
            path = build_wheel(
                root / "files",
                name,
                f"1.{file_number}",
                requires_dist=[f"bench-{(index + 1) % projects:05d}>=1.0"],
                padding=padding,
            )
            content = path.read_bytes()
            total += len(content)
            digest = hashlib.sha256(content).hexdigest()
            attributes = f'href="../../files/{path.name}#sha256={digest}"'
            if index % 2 == 0:
                with zipfile.ZipFile(path) as archive:
                    metadata = next(n for n in archive.namelist() if n.endswith("METADATA"))
                    (root / "files" / f"{path.name}.metadata").write_bytes(archive.read(metadata))
                metadata_digest = hashlib.sha256(
                    (root / "files" / f"{path.name}.metadata").read_bytes()
                ).hexdigest()
                attributes += f' data-core-metadata="sha256={metadata_digest}"'
            anchors.append(f"<a {attributes}>{path.name}</a>")
        (root / "simple" / name).mkdir(parents=True)
        (root / "simple" / name / "index.html").write_text("\n".join(anchors))
    listing = "\n".join(f'<a href="{n}/">{n}</a>' for n in names)
    (root / "simple" / "index.html").write_text(listing)
    (root / ".complete").write_text(str(total))
    return total


def run_sync(args: argparse.Namespace) -> None:
    index_root = WORK / f"index-{args.projects}x{args.files}"
    started = time.monotonic()
    total = build_index(index_root, args.projects, args.files, args.padding)
    print(
        f"index: {args.projects} projects x {args.files} wheels, {total / 1e6:.0f} MB, "
        f"ready in {time.monotonic() - started:.0f} s"
    )
    work = Path(tempfile.mkdtemp())
    with nginx(index_root) as base:
        url = f"{base}/simple/"
        meta = work / "meta"
        assert metasrv(["init", str(meta), "--source", url]) == 0
        options = SyncOptions(fetch=FetchOptions(concurrency=16), checkpoint=500)
        started = time.monotonic()
        summary = sync_all(Storage(meta), url, options)
        elapsed = time.monotonic() - started
        rate = summary.projects / elapsed
        print(
            f"sync: {summary.projects} projects, {summary.files_added} files in {elapsed:.1f} s "
            f"= {rate:.1f} projects/s, {summary.requests} requests, {summary.errors} errors"
        )
        wheel_total_without_658 = total / 2
        print(
            f"bytes fetched: {summary.bytes_fetched / 1e6:.1f} MB = "
            f"{summary.bytes_fetched / total:.2%} of all archive bytes; against the half read by "
            f"ranges (no PEP 658): {summary.bytes_fetched / wheel_total_without_658:.2%}, "
            f"pages and metadata files included"
        )
        started = time.monotonic()
        again = sync_all(Storage(meta), url, options)
        print(
            f"re-sync with nothing new: {time.monotonic() - started:.1f} s, "
            f"{len(again.commits)} commits, {again.requests} requests"
        )
    shutil.rmtree(work)


def run_incremental(projects: int) -> None:
    """Commit 1 % and 0.1 % changed projects into the big repository; count objects written."""
    repo = build_repository(WORK / f"repo-{projects}", projects)
    clone = WORK / "incremental"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(
        ["git", "clone", "-q", "--bare", "--no-local", str(repo.path), str(clone)], check=True
    )
    storage = Storage(clone)
    names = project_names(projects, 0)
    rng = random.Random(7)
    for share in (0.001, 0.01):
        changed = rng.sample(names, int(projects * share))
        files: dict[str, bytes | None] = {
            f"data/{project_path(project.normalized_name)}": write_project(project)
            for project in (synthetic_project(n, names, random.Random(n)) for n in changed)
        }
        before = _loose_objects(clone)
        started = time.monotonic()
        storage.commit("main", files, f"{len(changed)} projects changed")
        elapsed = time.monotonic() - started
        written = _loose_objects(clone) - before
        print(
            f"incremental: {len(changed)} of {projects} projects changed ({share:.1%}): "
            f"commit in {elapsed * 1000:.0f} ms, {written} objects written "
            f"({written / len(changed):.1f} per changed project)"
        )
    shutil.rmtree(clone)


def _loose_objects(repository: Path) -> int:
    return sum(1 for p in (repository / "objects").glob("??/*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=2000)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--padding", type=int, default=128 * 1024)
    parser.add_argument("--repo-projects", type=int, default=100_000)
    args = parser.parse_args()
    run_sync(args)
    run_incremental(args.repo_projects)


if __name__ == "__main__":
    main()
