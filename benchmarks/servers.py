"""Servers the benchmarks start on 127.0.0.1, nginx over a folder and `metasrv serve`, polled."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

NGINX_CONF = """
user root; worker_processes {workers}; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 1024; }}
http {{ {access_log}; types {{ text/html html; {json_type} }} default_type {default_type};
  {pages} server {{ listen 127.0.0.1:{port}; root {root}; }} }}
"""
METASRV = (sys.executable, "-m", "metasrv")
# A PEP 691 source as PyPI serves it: index.json pages, gzip when asked, ETags (nginx's own).
JSON_PAGES = "index index.json index.html; gzip on; gzip_types application/vnd.pypi.simple.v1+json;"


def free_port() -> int:
    """Return a port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, seconds: float = 30) -> None:
    """Poll ``url`` until it answers at all, or give up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(url)
            return
        except httpx.TransportError:
            time.sleep(0.005)  # polling a port we just started, with a deadline
    raise SystemExit(f"{url} did not answer within {seconds} s")


@contextmanager
def nginx(
    root: Path,
    *,
    default_type: str = "application/octet-stream",
    access_log: Path | None = None,
    workers: int = 1,
    json_pages: bool = False,
) -> Iterator[str]:
    """Serve ``root`` with ``workers`` nginx workers; yield its base URL."""
    port = free_port()
    work = Path(tempfile.mkdtemp())
    log = f"access_log {access_log}" if access_log is not None else "access_log off"
    (work / "nginx.conf").write_text(
        NGINX_CONF.format(
            work=work,
            port=port,
            root=root,
            default_type=default_type,
            access_log=log,
            workers=workers,
            json_type="application/vnd.pypi.simple.v1+json json;" if json_pages else "",
            pages=JSON_PAGES if json_pages else "",
        )
    )
    process = subprocess.Popen(["nginx", "-c", str(work / "nginx.conf")])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        yield url
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(work)


def start_metasrv(
    repo_path: Path,
    *options: str,
    probe: str = "/",
    seconds: float = 30,
    tree: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str, float]:
    """Start ``metasrv serve`` on ``repo_path``; return it, its URL, seconds to ``probe``'s 200.

    ``tree``: a work tree whose code serves, not the installed one.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    # `python -m` puts its working folder first on sys.path: started from the tree, with the tree
    # on PYTHONPATH too (for anything the package starts), it runs the tree's code.
    environment = None if tree is None else os.environ | {"PYTHONPATH": str(tree)}
    process = subprocess.Popen(
        [*METASRV, "serve", "--repo", str(repo_path), "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tree,
        env=environment,
    )
    deadline = started + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + probe, timeout=seconds).status_code == 200:
                return process, url, time.monotonic() - started
        except httpx.TransportError:
            time.sleep(0.005)  # polling a port we just started, with a deadline
    process.kill()
    raise SystemExit(f"metasrv did not answer within {seconds:g} s")
