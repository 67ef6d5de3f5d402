"""Benchmark `uv pip compile` through metasrv against the same resolution from the source index.

Run: python -m benchmarks.simple_api [--projects 60] [--top 30] [--runs 3]
Needs nginx and uv. The source index is a static PEP 503 tree with PEP 658 files served by
nginx; metasrv syncs it and serves /simple/ under uvicorn (one worker). Every run uses a fresh
uv cache. Prints median seconds and requests per resolution, and the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn

from benchmarks.servers import free_port, nginx, wait_until_up
from metasrv.cli.main import main as metasrv
from metasrv.http.app import create_app
from tests.distributions import build_wheel

HERE = Path(__file__).resolve().parent
UV = Path(sys.executable).parent / "uv"


def build_source(root: Path, projects: int, seed: int = 3) -> list[str]:
    """Write a static index of projects with three versions each and a web of dependencies."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "files").mkdir(parents=True)
    rng = random.Random(seed)
    names = [f"graph-{index:03d}" for index in range(projects)]
    for index, name in enumerate(names):
        anchors = []
        for version in ("1.0", "1.1", "2.0"):
            later = names[index + 1 :]
            requirements = [
                f"{dependency}>={rng.choice(['1.0', '1.1'])}" + rng.choice(["", ",<3"])
                for dependency in rng.sample(later, min(len(later), rng.randint(0, 3)))
            ]
            path = build_wheel(root / "files", name, version, requires_dist=requirements)
            with zipfile.ZipFile(path) as archive:
                metadata = archive.read(
                    next(n for n in archive.namelist() if n.endswith("METADATA"))
                )
            (root / "files" / f"{path.name}.metadata").write_bytes(metadata)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            metadata_digest = hashlib.sha256(metadata).hexdigest()
            anchors.append(
                f'<a href="../../files/{path.name}#sha256={digest}" '
                f'data-core-metadata="sha256={metadata_digest}">{path.name}</a>'
            )
        (root / "simple" / name).mkdir(parents=True)
        (root / "simple" / name / "index.html").write_text("\n".join(anchors))
    (root / "simple" / "index.html").write_text("\n".join(f'<a href="{n}/">{n}</a>' for n in names))
    return names


class CountingApp:
    """An ASGI wrapper that counts HTTP requests."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        self.requests = 0

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests += 1
        await self.app(scope, receive, send)


def compile_once(requirements: Path, index_url: str) -> float:
    """Resolve with a fresh cache; return seconds."""
    with tempfile.TemporaryDirectory() as cache:
        started = time.monotonic()
        result = subprocess.run(
            [
                str(UV),
                "pip",
                "compile",
                str(requirements),
                "--index-url",
                index_url,
                "--cache-dir",
                cache,
                "--no-header",
                "--quiet",
                "--no-config",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"uv pip compile failed against {index_url}:\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=60)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    names = build_source(work / "source", args.projects)
    requirements = work / "requirements.in"
    requirements.write_text("\n".join(names[: args.top]) + "\n")
    access_log = work / "access.log"
    with nginx(work / "source", access_log=access_log) as source:
        source_url = f"{source}/simple/"
        assert metasrv(["init", str(work / "meta"), "--source", source_url]) == 0
        assert metasrv(["sync", "--all", "--repo", str(work / "meta")]) == 0
        app = CountingApp(create_app(work / "meta"))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        metasrv_url = f"http://127.0.0.1:{port}/simple/"
        wait_until_up(metasrv_url)
        figures: dict[str, tuple[float, float]] = {}
        for label, url in (("source", source_url), ("metasrv", metasrv_url)):
            access_log.write_text("")
            app.requests = 0
            times = [compile_once(requirements, url) for _ in range(args.runs)]
            served = len(access_log.read_text().splitlines()) if label == "source" else app.requests
            figures[label] = (statistics.median(times), served / args.runs)
        server.should_exit = True
        thread.join()
    shutil.rmtree(work)
    for label, (seconds, requests) in figures.items():
        print(
            f"{label}: uv pip compile of {args.top} packages in {seconds:.3f} s (median of "
            f"{args.runs}, fresh cache), {requests:.0f} requests per resolution"
        )
    ratio = figures["metasrv"][0] / figures["source"][0]
    print(
        f"metasrv / source: {ratio:.2f}x the time, "
        f"{figures['metasrv'][1] / figures['source'][1]:.2f}x the requests"
    )


if __name__ == "__main__":
    main()
