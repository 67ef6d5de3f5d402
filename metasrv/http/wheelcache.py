"""Rewritten wheels, prepared in the background and kept on disk by what they are made of.

No page request downloads a wheel: each understanding's view is prepared when the server serves
a new state of it (``SimpleApi.prepare_rewrites``); a page asks which rewritten wheels are ready,
starts the missing ones (combinations of understandings, evictions) on a few worker threads
(bounded concurrency, a disk budget), waits for them at most ``page_wait_seconds``, and leaves
out those still not ready. ``<key>.sha256`` is written
last, so its presence means the wheel and its METADATA are complete; the digest is then read,
never recomputed, and a wheel once written never changes: its key is its recipe.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from metasrv.errors import MetasrvError, SourceError, Unavailable
from metasrv.http.wheels import rewrite_wheel
from metasrv.index.client import Fetcher, FetchOptions, make_client
from metasrv.model import CoreMetadata, DistFile

# A wheel an understanding changed is downloaded and rewritten once; larger ones are refused.
MAX_PATCHED_WHEEL_BYTES = 200 * 1024 * 1024
MAX_CACHE_BYTES = 8 * 1024 * 1024 * 1024
PAGE_WAIT_SECONDS = 5.0
# A wheel that failed to download or rewrite is not tried again for this long.
RETRY_AFTER_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Rewritten:
    """A rewritten wheel on disk, its sha256, and its METADATA."""

    path: Path
    sha256: str
    size: int
    metadata: bytes


class WheelCache:
    """Rewritten wheels on disk, prepared by background workers, at most one job per wheel."""

    def __init__(
        self,
        folder: Path,
        *,
        workers: int = 2,
        max_bytes: int = MAX_CACHE_BYTES,
        page_wait_seconds: float = PAGE_WAIT_SECONDS,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.page_wait_seconds = page_wait_seconds
        self._known: dict[str, Rewritten] = {}
        self._jobs: dict[str, Future[Rewritten]] = {}
        self._failed_at: dict[str, float] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="metasrv-wheels")
        self._disk_bytes: int | None = None
        self._log = log or (lambda line: None)

    def ready(self, dist_file: DistFile, metadata: CoreMetadata) -> Rewritten | None:
        """Return the rewritten wheel if it is on disk; never downloads."""
        key = _key(dist_file, metadata)
        known = self._known.get(key)
        if known is not None:
            return known
        if not (self.folder / f"{key}.sha256").exists():
            return None
        return self._load(key)

    def prepare(self, dist_file: DistFile, metadata: CoreMetadata) -> Future[Rewritten]:
        """Start preparing a rewritten wheel on a worker (joined if already under way)."""
        key = _key(dist_file, metadata)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and (not job.done() or job.exception() is None):
                return job
            failed_at = self._failed_at.get(key)
            if (
                job is not None
                and failed_at is not None
                and time.monotonic() - failed_at < RETRY_AFTER_SECONDS
            ):
                return job  # the failure stands for a while: no download per request
            job = self._executor.submit(self._build, key, dist_file, metadata)
            self._jobs[key] = job
            return job

    async def get(self, dist_file: DistFile, metadata: CoreMetadata) -> Rewritten:
        """Return the rewritten wheel, waiting (off the loop) for the one job preparing it."""
        rewritten = self.ready(dist_file, metadata)
        if rewritten is not None:
            return rewritten
        return await asyncio.wrap_future(self.prepare(dist_file, metadata))

    def _build(self, key: str, dist_file: DistFile, metadata: CoreMetadata) -> Rewritten:
        try:
            if not (self.folder / f"{key}.sha256").exists():
                self._write(key, dist_file, metadata)
            return self._load(key)
        except Exception as exc:
            self._failed_at[key] = time.monotonic()
            # Pages only leave the wheel out: this line is the operator's one trace of why.
            reason = (
                exc.message if isinstance(exc, MetasrvError) else f"{type(exc).__name__}: {exc}"
            )
            # The name is the data's: repr keeps a line break in it from forging a log line.
            self._log(
                f"rewritten wheel {dist_file.filename!r}: {reason}; left out of pages until "
                f"one asks again after {RETRY_AFTER_SECONDS:.0f} s"
            )
            raise

    def _write(self, key: str, dist_file: DistFile, metadata: CoreMetadata) -> None:
        original = dist_file.hashes.get("sha256")
        if original is None:
            raise SourceError(f"{dist_file.filename}: no sha256 to verify the original against")
        if self._used_bytes() + (dist_file.size or 0) * 2 > self.max_bytes:
            raise Unavailable(f"{dist_file.filename}: the rewritten-wheel cache is full")
        content = asyncio.run(_download(dist_file.url, original))
        rewritten, new_metadata = rewrite_wheel(content, metadata)
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.folder / f"{key}.metadata", new_metadata)
        _write_atomically(self.folder / f"{key}.whl", rewritten)
        digest = hashlib.sha256(rewritten).hexdigest().encode()
        _write_atomically(self.folder / f"{key}.sha256", digest)
        with self._lock:
            self._disk_bytes = self._used_bytes() + len(rewritten) + len(new_metadata)

    def _used_bytes(self) -> int:
        if self._disk_bytes is None:
            folder = self.folder
            files = folder.iterdir() if folder.is_dir() else iter(())
            self._disk_bytes = sum(path.stat().st_size for path in files if path.is_file())
        return self._disk_bytes

    def _load(self, key: str) -> Rewritten:
        wheel_path = self.folder / f"{key}.whl"
        known = Rewritten(
            wheel_path,
            (self.folder / f"{key}.sha256").read_text(),
            wheel_path.stat().st_size,
            (self.folder / f"{key}.metadata").read_bytes(),
        )
        self._known[key] = known
        return known


def _key(dist_file: DistFile, metadata: CoreMetadata) -> str:
    recipe = json.dumps(
        [
            dist_file.hashes.get("sha256"),
            metadata.requires_dist,
            metadata.requires_python,
            metadata.provides_extra,
        ]
    )
    return hashlib.sha256(recipe.encode()).hexdigest()


async def _download(url: str, sha256: str) -> bytes:
    options = FetchOptions(timeout_seconds=60)
    async with make_client(options) as client:
        response = await Fetcher(client, options).get(url, max_bytes=MAX_PATCHED_WHEEL_BYTES)
    if response.status_code != 200:
        raise SourceError(f"{url}: HTTP {response.status_code}")
    if hashlib.sha256(response.content).hexdigest() != sha256:
        raise SourceError(f"{url}: the downloaded wheel's sha256 is not the one on record")
    return response.content


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_bytes(content)
    temporary.replace(path)
