"""Benchmark a whole-index mirror at PyPI scale: sync by serial, the /simple/ root, the read API.

Run: python -m benchmarks.whole_index [--projects 740000] [--changed 0.01] [--seconds 15]
     [--rounds 5] [--parts sync,root,read-api,warm]
Needs nginx, wrk and curl (Debian packages). Builds once, and reuses, a synthetic meta repository
whose projects carry a source-serial and a matching static source (a PEP 691 root with serials,
served gzip-capable by nginx). Prints each figure with its target from issue 12.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.read_api import (
    alternate_wrk,
    cold_latencies,
    fetch_bodies,
    median_ratio,
    percentile,
    release_paths,
    rss_mb,
    touch_all_projects,
    warm_up,
)
from benchmarks.servers import METASRV, nginx, start_metasrv
from benchmarks.synthetic import build_repository, project_names
from metasrv.index.pages import MIME_SIMPLE_JSON
from metasrv.names import normalize_name, project_path
from metasrv.repo.catalog import DATA_ROOT, Catalog
from metasrv.repo.namesfile import names_file
from metasrv.repo.storage import Storage

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
FIRST_SERIAL = 1
WARM_REPEATS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=740_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of projects changed")
    parser.add_argument("--warm-paths", type=int, default=20_000)
    parser.add_argument("--cold-requests", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5, help="metasrv/nginx wrk pairs per workers")
    parser.add_argument(
        "--parts", default="sync,root,read-api,warm", help="which measures, comma-separated"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    repo_path = WORK / f"repo-serials-{args.projects}"
    started = time.monotonic()
    storage = build_repository(repo_path, args.projects, serial=FIRST_SERIAL)
    print(f"repository: {args.projects} projects ready in {time.monotonic() - started:.0f} s")
    if "sync" in parts:
        measure_sync(repo_path, storage, args)
    if "root" in parts:
        measure_root(repo_path, storage)
    if parts & {"read-api", "warm"}:
        cold_paths, warm_paths = sampled_paths(storage, args)
        if "read-api" in parts:
            measure_read_api(repo_path, cold_paths, args)
        if "warm" in parts:
            measure_warm(repo_path, warm_paths, args)


def measure_sync(repo_path: Path, storage: Storage, args: argparse.Namespace) -> None:
    """A whole-index sync against a matching source: first, incremental, 304."""
    names = project_names(args.projects, 0)
    source = Path(tempfile.mkdtemp(prefix="metasrv-source-"))
    write_root(source, dict.fromkeys(names, FIRST_SERIAL))
    access_log = source / "access.log"
    with nginx(source, json_pages=True, access_log=access_log) as url:
        simple_url = f"{url}/simple/"
        state = run_sync(repo_path, simple_url, access_log)
        print(f"first --all on the mirror (builds the serial state from git): {state}")
        changed = random.Random(3).sample(names, max(1, int(len(names) * args.changed)))
        serials = dict.fromkeys(names, FIRST_SERIAL)
        catalog = Catalog(storage)
        head = storage.resolve(None)
        changed_serial = int(time.time())  # above every serial an earlier run left behind
        for name in changed:
            write_yanked_page(source, catalog, head, name, changed_serial)
            serials[name] = changed_serial
        write_root(source, serials)
        objects_before = loose_objects(repo_path)
        incremental = run_sync(repo_path, simple_url, access_log)
        incremental["objects written"] = loose_objects(repo_path) - objects_before
        projected_full = incremental["seconds"] / len(changed) * len(names)
        print(
            f"incremental sync, {len(changed)} of {len(names)} projects changed: {incremental}; "
            f"targets: requests <= {len(changed) + 2}, "
            f"time < 5 % of a full sync's projected {projected_full:.0f} s "
            f"(here {incremental['seconds'] / projected_full:.1%})"
        )
        unchanged = run_sync(repo_path, simple_url, access_log)
        print(f"--all with the root unchanged (304): {unchanged}; target: 1 request")


def write_root(source: Path, serials: dict[str, int]) -> None:
    """Write the PEP 691 root with every project's _last-serial."""
    root = source / "simple"
    root.mkdir(parents=True, exist_ok=True)
    projects = [{"name": name, "_last-serial": serial} for name, serial in serials.items()]
    document = {"meta": {"api-version": "1.1", "_last-serial": max(serials.values())}}
    (root / "index.json").write_text(json.dumps({**document, "projects": projects}))


def write_yanked_page(source: Path, catalog: Catalog, head: str, name: str, serial: int) -> None:
    """Write a project's page as the mirror has it, with its first file yanked: a change that
    moves the serial and needs no archive read."""
    project = catalog.get_project(catalog.storage.resolve(head), name)
    files = [
        {
            "filename": dist_file.filename,
            "url": dist_file.url,
            "hashes": dict(dist_file.hashes),
            "requires-python": dist_file.requires_python,
            # A reason of this run's own: a rerun on the same repository changes the file again.
            "yanked": f"benchmark {serial}" if index == 0 else dist_file.yanked,
            "size": dist_file.size,
            "upload-time": dist_file.upload_time,
        }
        for index, dist_file in enumerate(f for r in project.releases for f in r.files)
    ]
    page = {"meta": {"api-version": "1.1", "_last-serial": serial}, "name": name, "files": files}
    folder = source / "simple" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").write_text(json.dumps(page))


def run_sync(repo_path: Path, simple_url: str, access_log: Path) -> dict[str, float]:
    """Run ``metasrv sync --all`` in its own process: wall time, requests, peak RSS."""
    logged_before = _lines(access_log)
    started = time.monotonic()
    process = subprocess.Popen(
        [*METASRV, "sync", "--all", "--repo", str(repo_path), "--source", simple_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.monotonic() - started
    assert process.stdout is not None
    summary = process.stdout.read().strip()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sync failed: {summary}")
    return {
        "seconds": round(elapsed, 1),
        "requests": _lines(access_log) - logged_before,
        "peak RSS MB": round(usage.ru_maxrss / 1024),
        "commits": int(re.search(r"(\d+) commits", summary).group(1)),  # type: ignore[union-attr]
    }


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def loose_objects(repo_path: Path) -> int:
    """Return how many loose objects the repository holds (what a sync wrote)."""
    output = subprocess.run(
        ["git", "count-objects"], cwd=repo_path, capture_output=True, text=True, check=True
    ).stdout
    return int(output.split()[0])


def start_server(repo_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``metasrv serve`` with ``extra`` options; return it once it answers."""
    # --quiet --offline: measure answers, not the access log or pull-through's bookkeeping. A
    # cold start lists 740,000 projects once.
    process, url, _ = start_metasrv(repo_path, "--quiet", "--offline", *extra, seconds=600)
    return process, url


def measure_root(repo_path: Path, storage: Storage) -> None:
    """Time /simple/ cold (first after a commit) and warm, raw, gzip and zstd, HTML and JSON."""
    saved = names_file(repo_path).exists()
    process, url = start_server(repo_path)
    try:
        first, _ = _timed(url, {"accept": "text/html", "accept-encoding": "identity"})
        print(
            f"/simple/ first request of a new server: {first:.0f} ms "
            f"({'from the saved listing' if saved else 'no saved listing: every project read'})"
        )
        for accept in ("text/html", MIME_SIMPLE_JSON):
            touch_data(storage)
            for encoding in ("identity", "gzip", "zstd"):
                headers = {"accept": accept, "accept-encoding": encoding}
                cold, size = _timed(url, headers)
                warm = statistics.median(_timed(url, headers)[0] for _ in range(WARM_REPEATS))
                print(
                    f"/simple/ {accept} {encoding}: cold {cold:.0f} ms, warm {warm:.1f} ms "
                    f"(target < 50 ms), {size / 1e6:.1f} MB sent"
                )
    finally:
        process.terminate()
        process.wait()


def touch_data(storage: Storage) -> None:
    """Commit a change under data/ so the next root page is rendered afresh."""
    path = f"{DATA_ROOT}/{project_path(normalize_name(project_names(1, 0)[0]))}"
    content = storage.read(storage.resolve(None), path) or b""
    storage.commit("main", {path: content + f"# touched {time.time()}\n".encode()}, "touch")


def _timed(url: str, headers: dict[str, str]) -> tuple[float, int]:
    """Return the milliseconds curl takes to fetch /simple/ and the bytes it was sent."""
    # curl, not httpx: httpx reads a 35 MB body in 64 KB pieces and joins them, which takes
    # several times what the server does (90 of 100 ms for the HTML root), so httpx measures itself.
    command = ["curl", "-sS", "-o", "/dev/null"]
    command += ["-w", "%{http_code} %{time_total} %{size_download}"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    status, seconds, size = subprocess.check_output([*command, url + "/simple/"], text=True).split()
    assert status == "200", status
    return float(seconds) * 1000, int(size)


def sampled_paths(storage: Storage, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Return the release paths read cold and those read warm, the same in every run."""
    # Only these paths are needed: reading all 740,000 projects' releases takes minutes.
    sample = random.Random(1).sample(
        project_names(args.projects, 0), args.cold_requests + args.warm_paths
    )
    paths = release_paths(Catalog(storage), sample)
    return paths[: args.cold_requests], paths[args.cold_requests :]


def measure_read_api(repo_path: Path, cold_paths: list[str], args: argparse.Namespace) -> None:
    """Release reads cold p99, and RSS after every project."""
    process, url = start_server(repo_path)
    try:
        cold = cold_latencies(url, cold_paths)
        print(f"release cold p99 {percentile(cold, 99):.2f} ms (target < 5 ms)")
        touch_all_projects(url, args.projects)
        print(f"RSS after touching all {args.projects}: {rss_mb(process.pid):.0f} MB (< 300)")
    finally:
        process.terminate()
        process.wait()


def measure_warm(repo_path: Path, warm_paths: list[str], args: argparse.Namespace) -> None:
    """Warm req/s with 1 and 2 workers against nginx with as many, in alternating wrk rounds."""
    with tempfile.TemporaryDirectory() as static_root:
        for workers in (1, 2):
            process, url = start_server(repo_path, "--workers", str(workers))
            try:
                if workers == 1:
                    fetch_bodies(url, warm_paths, Path(static_root))
                # Warm: every worker has read the paths it is sent (each worker has its own caches,
                # and which worker takes a connection is the kernel's choice).
                warm_up(url, warm_paths, args.seconds)
                with nginx(
                    Path(static_root), default_type="application/json", workers=workers
                ) as n:
                    pairs = alternate_wrk(url, n, warm_paths, args.seconds, args.rounds)
            finally:
                process.terminate()
                process.wait()
            rounds = ", ".join(f"{ours:.0f}/{theirs:.0f}" for ours, theirs in pairs)
            print(
                f"--workers {workers}: median {median_ratio(pairs):.0%} of nginx with {workers} "
                f"worker(s) (target >= 30 %); req/s metasrv/nginx by round: {rounds}"
            )


if __name__ == "__main__":
    main()
