"""Pull-through's one writer: changes queue while a commit runs and land together in the next."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import NormalizedName

from metasrv.errors import InvalidData, MetasrvError, UnknownProject
from metasrv.index.buildrun import start_in_background
from metasrv.index.projectmerge import Merge
from metasrv.model import MetadataStatus, Project
from metasrv.names import project_path
from metasrv.repo.catalog import DATA_ROOT, Catalog, blob_id_of
from metasrv.repo.objectfolders import make_object_folders
from metasrv.repo.projectfile import write_project
from metasrv.repo.storage import BlobId, CommitId, Storage

Documents = dict[str, bytes]  # path -> a PEP 658 document read, committed with its change
# A commit costs about the same whatever it holds, and its CPU is what a burst of first requests
# waits for (the server's one GIL), not a few milliseconds more: a commit waits this long at most
# for the changes already on their way (`coming`), so a burst makes a few commits, not one each.
GATHER_SECONDS = 0.025


@dataclass(slots=True)
class _Job:
    normalized_name: NormalizedName
    merge: Merge
    label: str
    future: asyncio.Future[CommitId | None]
    documents: Documents


@dataclass(slots=True)
class _Batch:
    jobs: list[_Job]
    failures: dict[NormalizedName, MetasrvError] = field(default_factory=dict)


class PullWriter:
    """Commit pull-through's changes on its loop: many pulls, few commits, one at a time."""

    def __init__(
        self,
        repo_path: Path,
        source_url: str,
        branch: str | None,
        *,
        build_in_background: bool,
        written: Callable[[BlobId, Project], None] | None = None,
    ) -> None:
        self.source_url = source_url
        self._branch = branch
        self._build_in_background = build_in_background
        self._writer = Storage(repo_path)  # written in commit threads, one at a time
        make_object_folders(self._writer.path)
        self._catalog = Catalog(self._writer)
        self._queue: list[_Job] = []
        self._committing: asyncio.Task[None] | None = None
        self._coming = 0  # changes announced and not yet queued
        self._all_in: asyncio.Event | None = None  # set when the last of them is
        self._written = written or (lambda blob_id, project: None)

    def follow_head(self) -> CommitId | None:
        """Merge HEAD's branch into the data branch when it has new commits; they win conflicts.

        The data branch starts at HEAD's commit; what is committed to HEAD's branch later (an
        understanding, a sync, an edit) is served once it is merged in. Returns the merge.
        """
        head_branch = self._writer.head_branch()
        if self._branch is None or self._branch == head_branch:
            return None
        ours = self._writer.branch_commit(self._branch)
        theirs = self._writer.branch_commit(head_branch)
        if ours is None or theirs is None:
            return None
        base = self._writer.merge_base(ours, theirs)
        if base == theirs:
            return None  # nothing new on HEAD's branch
        changes = {
            change.path: None
            if change.new_blob is None
            else self._writer.read_blob(change.new_blob)
            for change in (self._writer.diff(base, theirs, "") if base is not None else [])
        }
        return self._writer.commit_computed(
            self._branch,
            lambda _: (changes, f"Merge {head_branch} into {self._branch}"),
            merged=theirs,
        )

    @property
    def queued(self) -> int:
        """Return how many changes wait to be committed, the one being committed included."""
        return len(self._queue)

    def running(self) -> list[asyncio.Task[None]]:
        """Return the commit task in progress, if any, for a shutdown to cancel."""
        task = self._committing
        return [task] if task is not None and not task.done() else []

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Announce a change on its way for the block's duration; queue it after the block."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1
            if not self._coming and self._all_in is not None:
                self._all_in.set()

    async def write(
        self, normalized_name: NormalizedName, merge: Merge, label: str, documents: Documents
    ) -> CommitId | None:
        """Queue a change; whoever commits next commits everything queued, in one commit."""
        future: asyncio.Future[CommitId | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(normalized_name, merge, label, future, documents))
        if len(self._queue) == 1:
            self._committing = asyncio.ensure_future(self._commit_queue())
        return await future

    async def _commit_queue(self) -> None:
        # Jobs that arrive while a commit runs wait for the next one: many pulls, few commits.
        while self._queue:
            await self._gather()
            batch = _Batch(self._queue[:])
            try:
                commit_id = await asyncio.to_thread(self._commit, batch)
            except Exception as exc:  # a failed commit fails its jobs, not the pull thread
                outcomes: list[BaseException | CommitId | None] = [exc] * len(batch.jobs)
            else:
                outcomes = [
                    batch.failures.get(job.normalized_name, commit_id) for job in batch.jobs
                ]
            finally:
                del self._queue[: len(batch.jobs)]
            for job, outcome in zip(batch.jobs, outcomes, strict=True):
                # A waiter that went away (a client hung up) cancelled its future: skip it.
                if job.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    async def _gather(self) -> None:
        """Wait, ``GATHER_SECONDS`` at most, until no announced change is still on its way."""
        if self._coming:
            self._all_in = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GATHER_SECONDS):
                    await self._all_in.wait()

    def _current(self, parent: CommitId | None, normalized_name: NormalizedName) -> Project | None:
        """Return the project as ``parent`` holds it, or None."""
        try:
            return None if parent is None else self._catalog.get_project(parent, normalized_name)
        except UnknownProject:
            return None

    def _commit(self, batch: _Batch) -> CommitId | None:
        head_branch = self._writer.head_branch()
        branch = self._branch or head_branch
        start_point = self._writer.branch_commit(head_branch)
        if branch != head_branch:
            self.follow_head()

        dynamic: set[NormalizedName] = set()

        def compute(parent: CommitId | None) -> tuple[dict[str, bytes | None], str]:
            changes: dict[str, bytes | None] = {}
            dynamic.clear()
            labels: list[str] = []
            grouped: dict[NormalizedName, list[_Job]] = {}
            for job in batch.jobs:
                grouped.setdefault(job.normalized_name, []).append(job)
            for normalized_name, jobs in grouped.items():
                try:
                    current = self._current(parent, normalized_name)
                except InvalidData as exc:
                    batch.failures[normalized_name] = exc
                    continue
                project = current
                for job in jobs:
                    project = job.merge(project)
                if project is not None and project != current:
                    content = write_project(project)
                    changes[f"{DATA_ROOT}/{project_path(normalized_name)}"] = content
                    # The next commit, and the server's reader, need not parse what was written.
                    blob_id = blob_id_of(content)  # hashed once for both
                    self._catalog.remember(blob_id, project)
                    self._written(blob_id, project)
                    labels += [job.label for job in jobs]
                    if _has_dynamic_sdists(project):
                        dynamic.add(normalized_name)
            count = len(changes)
            for job in batch.jobs:
                changes.update(job.documents)
            message = (
                f"pull-through: {count} project{'s' if count != 1 else ''} "
                f"from {self.source_url}\n\n" + "\n".join(f"- {label}" for label in labels)
            )
            return changes, message

        commit_id = self._writer.commit_computed(branch, compute, start_point=start_point)
        if commit_id is not None and dynamic and self._build_in_background:
            # A process of its own builds them ([builds] in metasrv.toml); no request waits.
            start_in_background(self._writer)
        return commit_id or self._writer.branch_commit(branch)


def _has_dynamic_sdists(project: Project) -> bool:
    return any(
        dist_file.metadata_status is MetadataStatus.DYNAMIC
        for release in project.releases
        for dist_file in release.files
    )
