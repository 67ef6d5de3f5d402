"""Benchmark pull-through: `uv pip compile` against an empty meta repository, and a cheap read's
latency while first requests are pulled through.

Run: python -m benchmarks.pull_through [--projects 60] [--top 30] [--runs 3] [--pulls 50]
Needs nginx, uv and curl. The source is the static PEP 503 tree with PEP 658 files of
benchmarks.simple_api, served by nginx. Figures, each with a fresh uv cache:
(a) the source directly; (b) metasrv on a meta repository with nothing synced, everything pulled
through (a new repository and `metasrv serve --quiet` process per run); (c) the same server warm;
(d) the same again, with the answers the fast path kept from (c) if no commit came in between.
Prints each ratio to (a) and the requests each makes to the source (nginx's access log). Then, on
a new empty repository per run, `GET /v1/projects` p50 / p99 while ``--pulls`` first requests for
distinct projects run at once.
Last, the first page of a project with ``--big`` files (numpy has about 4,400), pulled through
an empty repository, against the source serving that page itself (PEP 691 JSON, nginx).
Targets (issue 11): (b) <= 2x, (c) <= 1.1x, p99 < 50 ms; the big page "in about the time the
source takes to serve its own page".
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks.servers import nginx, start_metasrv
from benchmarks.simple_api import build_source, compile_once
from metasrv.cli.main import main as metasrv


def new_meta_repository(work: Path, source_url: str) -> Path:
    """Create a meta repository in front of ``source_url`` that has synced nothing."""
    meta = Path(tempfile.mkdtemp(dir=work))
    shutil.rmtree(meta)
    assert metasrv(["init", str(meta), "--source", source_url]) == 0
    return meta


@contextmanager
def empty_metasrv(work: Path, source_url: str, tree: Path | None = None) -> Iterator[str]:
    """Serve a new empty meta repository from a ``metasrv serve`` process; yield its base URL.

    ``tree``: a work tree whose code serves (start_metasrv), not the installed one.
    """
    # What an operator runs (its protocol answers kept pages itself), in a process of its own:
    # clients in this one must not share the server's GIL.
    server, url, _ = start_metasrv(new_meta_repository(work, source_url), "--quiet", tree=tree)
    try:
        yield url
    finally:
        server.terminate()
        server.wait()


def build_big_project(root: Path, files: int) -> str:
    """Write a PEP 691 page of one project with ``files`` wheels (never downloaded); name it.

    Shaped as PyPI's numpy: 20 wheels per version, each file in a folder of its own (PyPI links
    its file host; mirrors such as bandersnatch link ``../../packages/4e/3a/<hash>/``).
    """
    name = "big-project"
    entries = []
    for index in range(files):
        version, wheel = divmod(index, 20)
        filename = f"big_project-1.{version}-cp3{wheel}-cp3{wheel}-manylinux_2_17_x86_64.whl"
        digest = f"{index:064x}"
        entries.append(
            {
                "filename": filename,
                "url": f"../../packages/{digest[-2:]}/{digest[-4:-2]}/{digest}/{filename}",
                "hashes": {"sha256": digest},
                "requires-python": ">=3.10",
                "size": 15_000_000 + index,
                "upload-time": "2026-01-01T00:00:00.000000Z",
                "core-metadata": {"sha256": f"{index + 1:064x}"},
            }
        )
    page = {"meta": {"api-version": "1.1"}, "name": name, "files": entries, "versions": []}
    folder = root / "simple" / name
    folder.mkdir(parents=True)
    (folder / "index.json").write_text(json.dumps(page))
    return name


def timed_page(client: httpx.Client, url: str, files: int) -> float:
    """Return the seconds a PEP 691 project page takes, checking it lists ``files`` files."""
    started = time.perf_counter()
    answer = client.get(url, headers={"accept": "application/vnd.pypi.simple.v1+json"})
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text[:200]
    assert len(answer.json()["files"]) == files
    return elapsed


def big_first_page(work: Path, files: int, runs: int) -> tuple[float, float, float]:
    """Return median seconds: the source's page, metasrv's first page of it, metasrv's warm."""
    root = work / "big"
    name = build_big_project(root, files)
    figures: dict[str, list[float]] = {"source": [], "first": [], "warm": []}
    with nginx(root, json_pages=True) as source, httpx.Client(timeout=120) as client:
        for _ in range(runs):
            figures["source"].append(timed_page(client, f"{source}/simple/{name}/", files))
            with empty_metasrv(work, f"{source}/simple/") as url:
                figures["first"].append(timed_page(client, f"{url}/simple/{name}/", files))
                figures["warm"].append(timed_page(client, f"{url}/simple/{name}/", files))
    return (
        statistics.median(figures["source"]),
        statistics.median(figures["first"]),
        statistics.median(figures["warm"]),
    )


def lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def pull_burst(url: str, names: list[str]) -> subprocess.Popen[str]:
    """Start one first request per name at once, from a curl process; it prints each status."""
    # Not threads of this process: 50 httpx clients making their TLS contexts took this
    # process's GIL (and a core) from the timed requests, which then measured the client.
    command = ["curl", "-sS", "--no-progress-meter", "--parallel", "--parallel-immediate"]
    command += ["--parallel-max", "100"]
    for name in names:
        command += [f"{url}/simple/{name}/", "-o", "/dev/null", "-w", "%{http_code}\\n"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def latency_under_pulls(url: str, names: list[str], pulls: int) -> list[float]:
    """Return the ms of each GET /v1/projects made while ``pulls`` first requests run."""
    samples: list[float] = []
    with httpx.Client(base_url=url, timeout=120) as http:
        http.get("/v1/projects")  # warm the connection
        burst = pull_burst(url, names[:pulls])
        while burst.poll() is None or len(samples) < 20:
            started = time.perf_counter()
            http.get("/v1/projects")
            samples.append((time.perf_counter() - started) * 1000)
        statuses, _ = burst.communicate()
    assert statuses.split() == ["200"] * pulls, statuses
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=60)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pulls", type=int, default=50)
    parser.add_argument("--big", type=int, default=4_400, help="files of the big project")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    names = build_source(work / "source", max(args.projects, args.pulls))
    requirements = work / "requirements.in"
    requirements.write_text("\n".join(names[: args.top]) + "\n")
    access_log = work / "access.log"
    figures: dict[str, list[tuple[float, int]]] = {"a": [], "b": [], "c": [], "d": []}
    with nginx(work / "source", access_log=access_log) as source:
        source_url = f"{source}/simple/"
        for _ in range(args.runs):
            access_log.write_text("")
            figures["a"].append((compile_once(requirements, source_url), lines(access_log)))
            with empty_metasrv(work, source_url) as url:
                access_log.write_text("")
                seconds = compile_once(requirements, f"{url}/simple/")
                figures["b"].append((seconds, lines(access_log)))
                for label in ("c", "d"):
                    access_log.write_text("")
                    seconds = compile_once(requirements, f"{url}/simple/")
                    figures[label].append((seconds, lines(access_log)))
        # One burst gives 20-30 samples, whose p99 is its slowest request: a burst per run.
        samples = []
        for _ in range(args.runs):
            with empty_metasrv(work, source_url) as url:
                samples += latency_under_pulls(url, names, args.pulls)
    quantiles = statistics.quantiles(samples, n=100)
    big_source, big_first, big_warm = big_first_page(work, args.big, args.runs)
    shutil.rmtree(work)
    medians = {
        label: (statistics.median(s for s, _ in runs), statistics.median(r for _, r in runs))
        for label, runs in figures.items()
    }
    titles = {
        "a": "source directly",
        "b": "metasrv, empty (pulled through)",
        "c": "metasrv, warm",
        "d": "metasrv, warm again (answers kept by the fast path)",
    }
    for label, (seconds, requests) in medians.items():
        print(
            f"({label}) {titles[label]}: uv pip compile of {args.top} packages in {seconds:.3f} s "
            f"(median of {args.runs}, fresh uv cache), {requests:.0f} requests to the source"
        )
    print(f"(b)/(a) = {medians['b'][0] / medians['a'][0]:.2f}x (target <= 2)")
    print(f"(c)/(a) = {medians['c'][0] / medians['a'][0]:.2f}x (target <= 1.1)")
    print(f"(d)/(a) = {medians['d'][0] / medians['a'][0]:.2f}x")
    print(
        f"GET /v1/projects while {args.pulls} pull-throughs run: p50 {quantiles[49]:.1f} ms, "
        f"p99 {quantiles[98]:.1f} ms over {len(samples)} requests in {args.runs} bursts "
        "(target p99 < 50 ms)"
    )
    print(
        f"first page of a project with {args.big} files: source {big_source * 1000:.1f} ms, "
        f"metasrv first {big_first * 1000:.1f} ms ({big_first / big_source:.1f}x), "
        f"warm {big_warm * 1000:.1f} ms ({big_warm / big_source:.1f}x)"
    )


if __name__ == "__main__":
    main()
