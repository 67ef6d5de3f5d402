"""What the connection guard costs, and what it buys: metasrv serve against plain uvicorn.

Both serve the same small repository with one worker. Figures: warm requests/s, p50 and p99 of
`GET /v1/projects/{name}/{version}` at 32 connections (wrk); then 1,100 connections that send
half a request and stop: how many each server still holds after the header deadline, and
whether it still answers `/`. Needs wrk (a Debian package).
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.read_api import run_wrk
from benchmarks.servers import free_port, wait_until_up
from tests.builders import create_meta_repository, make_project

PATHS = ["/v1/projects/flask/2.0.0", "/v1/projects/werkzeug/2.0.1", "/v1/projects/click/8.0.0"]
SLOW_CONNECTIONS = 1100
HEADER_TIMEOUT = 5
PLAIN = "import sys, uvicorn; from metasrv.http.app import create_app; " + (
    "uvicorn.run(create_app(sys.argv[1]), port=int(sys.argv[2]), log_level='warning', "
    "access_log=False)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # room for 1,100 client sockets
    repo = create_meta_repository(
        Path(tempfile.mkdtemp()) / "meta",
        make_project("Flask", {"1.1.4": ["Werkzeug<2.0", "click<8.0"], "2.0.0": ["Werkzeug>=2"]}),
        make_project("Werkzeug", ["1.0.1", "2.0.0", "2.0.1"]),
        make_project("click", ["7.1.2", "8.0.0"]),
    )
    figures = {}
    for label in ("plain uvicorn", "metasrv serve (guarded)"):
        port = free_port()
        # Plain uvicorn logs nothing and pulls nothing: compare like with like.
        serve = ["serve", "--repo", str(repo.path), "--port", str(port), "--quiet", "--offline"]
        command = (
            [sys.executable, "-c", PLAIN, str(repo.path), str(port)]
            if label == "plain uvicorn"
            else [sys.executable, "-m", "metasrv", *serve, "--header-timeout", str(HEADER_TIMEOUT)]
        )
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url + "/")
            figures[label] = run_wrk(url, PATHS, args.seconds)
            figures[label].update(slow_clients(port))
        finally:
            process.kill()
            process.wait()
    for label, values in figures.items():
        print(label, ", ".join(f"{key} {value:.1f}" for key, value in values.items()))
    plain, guarded = figures.values()
    print(f"guarded / plain requests/s: {guarded['requests/s'] / plain['requests/s']:.3f}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def slow_clients(port: int) -> dict[str, float]:
    """Open connections that never finish a request; count those held past the deadline."""
    sockets = []
    for _ in range(SLOW_CONNECTIONS):
        try:
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n")
            sockets.append(connection)
        except OSError:
            break
    time.sleep(HEADER_TIMEOUT + 2)  # let the header deadline pass (a benchmark, not a test)
    held = 0
    for connection in sockets:
        connection.setblocking(False)
        try:
            held += connection.recv(1) != b""
        except BlockingIOError:
            held += 1
        except OSError:
            pass
    try:
        answers = float(httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200)
    except httpx.TransportError:
        answers = 0.0
    for connection in sockets:
        connection.close()
    return {
        "slow connections opened": len(sockets),
        "held after deadline": held,
        "/ answers": answers,
    }


if __name__ == "__main__":
    main()
