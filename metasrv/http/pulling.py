"""Unpinned reads that pull a project through from the source when the data lacks it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from packaging.version import Version

from metasrv.errors import InvalidInput, SourceError, UnknownProject
from metasrv.http.readapi import Answer
from metasrv.index.pullthrough import PullThrough
from metasrv.names import normalize_name, parse_version

STALE_HEADER = "x-metasrv-stale"

T = TypeVar("T")


class PulledReads:
    """Wrap reads: on an unknown project fetch it, then read again; keep read projects fresh.

    ``recheck=False`` for a reader that exits once it has answered (``metasrv show``): a
    re-check in the background would be cut short, or not, by its exit.
    """

    def __init__(self, pull: PullThrough | None, *, recheck: bool = True) -> None:
        self.pull = pull
        self.recheck = recheck

    def active(self, at: str | None) -> bool:
        """Return whether a read at ``at`` may contact the source: pinned reads never do."""
        return self.pull is not None and at is None

    async def read(self, at: str | None, name: str, read: Callable[[], T]) -> T:
        """Return ``read()``, pulling the project through first when the data lacks it."""
        if self.pull is None or at is not None:
            return read()
        try:
            result = read()
        except UnknownProject:
            await self.pull.ensure(name)
            result = read()
        if self.recheck:
            self.touch(name)
        return result

    async def answer(
        self, at: str | None, name: str, version: str | None, read: Callable[[], Answer]
    ) -> tuple[Answer, dict[str, str]]:
        """Return a read API answer with pending metadata read, and the headers to add."""
        answer = await self.read(at, name, read)
        headers = self.headers(at, name)
        if answer.pending:
            try:
                if await self.complete(at, name, parse_version(version) if version else None):
                    answer = read()
            except SourceError as exc:
                headers[STALE_HEADER] = f"metadata not read: {exc.message}"
        return answer, headers

    async def complete(
        self, at: str | None, name: str, version: Version | None, filename: str | None = None
    ) -> bool:
        """Read a release's pending metadata (or one file's) now; return whether the data may
        have changed."""
        if self.pull is None or at is not None:
            return False
        await self.pull.complete(name, version, filename)
        return True

    def touch(self, name: str) -> None:
        """Schedule a background re-check of a project read unpinned."""
        if self.pull is not None:
            self.pull.touch(normalize_name(name))

    def headers(self, at: str | None, name: str) -> dict[str, str]:
        """Return the header saying an answer may be stale because the source is failing."""
        if self.pull is None or at is not None:
            return {}
        try:
            reason = self.pull.stale.get(normalize_name(name))
        except InvalidInput:
            return {}
        return {} if reason is None else {STALE_HEADER: reason}
