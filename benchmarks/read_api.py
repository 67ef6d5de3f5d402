"""Benchmark GET /v1/projects/{name}/{version} on a synthetic repository against nginx.

Run: python -m benchmarks.read_api [--projects 100000] [--warm-paths 20000] [--seconds 15]
Needs wrk and nginx (Debian packages). Prints figures and ratios against nginx from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.servers import nginx, start_metasrv
from benchmarks.synthetic import build_repository, project_names
from metasrv.repo.catalog import Catalog

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
CONNECTIONS = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=100_000)
    parser.add_argument("--warm-paths", type=int, default=20_000)
    parser.add_argument("--cold-requests", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()

    repo_path = WORK / f"repo-{args.projects}"
    started = time.monotonic()
    storage = build_repository(repo_path, args.projects)
    print(f"repository: {args.projects} projects ready in {time.monotonic() - started:.0f} s")
    paths = release_paths(Catalog(storage), project_names(args.projects, 0))
    rng = random.Random(1)
    rng.shuffle(paths)

    # --quiet --offline: measure answers, not the access log or pull-through's bookkeeping.
    server, url, first_answer = start_metasrv(repo_path, "--quiet", "--offline", probe=paths[0])
    try:
        print(f"first answer after start: {first_answer * 1000:.0f} ms")
        cold = cold_latencies(url, paths[1 : 1 + args.cold_requests])
        print(
            f"cold, 1 connection, {len(cold)} first requests: p50 {percentile(cold, 50):.2f} ms,"
            f" p99 {percentile(cold, 99):.2f} ms"
        )
        warm_paths = paths[: args.warm_paths]
        with tempfile.TemporaryDirectory() as static_root:
            fetch_bodies(url, warm_paths, Path(static_root))
            warm_up(url, warm_paths, args.seconds)
            metasrv_figures = run_wrk(url, warm_paths, args.seconds)
            nginx_figures = run_nginx(Path(static_root), warm_paths, args.seconds)
        report(metasrv_figures, nginx_figures)
        touch_all_projects(url, args.projects)
        print(f"RSS after touching all {args.projects} projects: {rss_mb(server.pid):.0f} MB")
    finally:
        server.terminate()
        server.wait()


def release_paths(catalog: Catalog, names: list[str]) -> list[str]:
    """Return one release URL per project: a random version of each (read off table headers)."""
    commit_id = catalog.storage.resolve(None)
    rng = random.Random(2)
    header = re.compile(rb'^\[\[?releases\."([^"]+)"', re.MULTILINE)
    paths = []
    for name in names:
        _, blob_id = catalog.project_blob(commit_id, name)
        versions = sorted(set(header.findall(catalog.storage.read_blob(blob_id))))
        paths.append(f"/v1/projects/{name}/{rng.choice(versions).decode()}")
    return paths


def cold_latencies(url: str, paths: list[str]) -> list[float]:
    """Return milliseconds per first request of each path, one connection."""
    latencies = []
    with httpx.Client(base_url=url) as client:
        for path in paths:
            started = time.perf_counter()
            response = client.get(path)
            latencies.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, path
    return latencies


def fetch_bodies(url: str, paths: list[str], static_root: Path) -> None:
    """Warm metasrv on every path and write its bodies where nginx will serve them."""
    # Identity, as wrk asks: the server keeps whole answers per coding, so httpx's default
    # "gzip, deflate, zstd" would warm answers wrk never asks for.
    with httpx.Client(base_url=url, headers={"accept-encoding": "identity"}) as client:
        for path in paths:
            target = static_root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.get(path).content)


def run_wrk(url: str, paths: list[str], seconds: int) -> dict[str, float]:
    """Run wrk with one thread and 32 connections over the rotating paths."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as paths_file:
        paths_file.write("\n".join(paths) + "\n")
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(HERE / "wrk_rotate.lua"),
            url,
        ],
        env={**os.environ, "WRK_PATHS": paths_file.name},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(paths_file.name)
    if "Non-2xx" in output:
        raise SystemExit(f"wrk saw errors:\n{output}")
    return {
        "requests/s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50 ms": _wrk_latency(output, "50%"),
        "p99 ms": _wrk_latency(output, "99%"),
    }


def _wrk_latency(output: str, label: str) -> float:
    value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def warm_up(url: str, paths: list[str], seconds: int, passes: int = 3) -> None:
    """Run wrk until one run has gone through the paths ``passes`` times (at most 10 runs)."""
    # A fixed-length warm-up is not enough: cold reads run at a twentieth of the warm rate, and
    # with several workers each worker keeps its own answers, so it must see every path itself.
    for _ in range(10):
        if run_wrk(url, paths, seconds)["requests/s"] * seconds >= passes * len(paths):
            return


def alternate_wrk(
    ours: str, theirs: str, paths: list[str], seconds: int, rounds: int
) -> list[tuple[float, float]]:
    """Run wrk against ``ours`` then ``theirs``, ``rounds`` times; return each pair's req/s."""
    # Pairs taken back to back, then their median ratio: on a shared VM either server's figure
    # alone drifts by a third between minutes, which one pair per server cannot tell from a change.
    return [
        (run_wrk(ours, paths, seconds)["requests/s"], run_wrk(theirs, paths, seconds)["requests/s"])
        for _ in range(rounds)
    ]


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    """Return the median of ours / theirs over back-to-back pairs."""
    return statistics.median(ours / theirs for ours, theirs in pairs)


def run_nginx(static_root: Path, paths: list[str], seconds: int) -> dict[str, float]:
    """Serve the same bodies as static files with one nginx worker and run the same wrk."""
    with nginx(static_root, default_type="application/json") as url:
        return run_wrk(url, paths, seconds)


def touch_all_projects(url: str, count: int, connections: int = 8) -> None:
    """Read every project once, over a few connections so that 740,000 take minutes, not an hour."""
    names = iter(project_names(count, 0))

    async def reader(client: httpx.AsyncClient) -> None:
        for name in names:  # shared: each name is read by one of the readers
            assert (await client.get(f"/v1/projects/{name}")).status_code == 200

    async def read_all() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await asyncio.gather(*(reader(client) for _ in range(connections)))

    asyncio.run(read_all())


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def percentile(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100)[pct - 1] if pct < 100 else max(values)


def report(metasrv: dict[str, float], nginx: dict[str, float]) -> None:
    print(json.dumps({"metasrv": metasrv, "nginx": nginx}, indent=2))
    ratio = metasrv["requests/s"] / nginx["requests/s"]
    print(
        f"warm, {CONNECTIONS} connections: metasrv {metasrv['requests/s']:.0f} req/s = "
        f"{ratio:.1%} of nginx {nginx['requests/s']:.0f} req/s"
    )


if __name__ == "__main__":
    main()
