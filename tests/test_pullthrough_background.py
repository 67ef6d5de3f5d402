"""Pull-through's background metadata reads beside the work clients wait for, in-process."""

from __future__ import annotations

from dataclasses import replace

from metasrv.index.pullthrough import PullThrough
from tests.deadlines import THREAD_DEADLINE_SECONDS, poll_until
from tests.test_pullthrough import Source, source
from tests.test_pullthrough_mutants import FAST, head_project, pending, run

__all__ = ["source"]  # the fixture, shared with the end-to-end pull-through tests

ALPHA_DOCUMENTS = [f"/files/pt_alpha-{v}-py3-none-any.whl.metadata" for v in ("1.0", "2.0")]


def test_a_clients_pull_does_not_queue_behind_a_background_read(source: Source) -> None:
    """A background batch asks for all its files at once: it must not take clients' slots."""
    for path in ALPHA_DOCUMENTS:
        source.index.behaviour.faults[path] = ["hold"]  # answered once the test releases them
    # Two slots for clients' work, as many as the background read's two held requests, which
    # outlast run's deadline: taking clients' slots, they would hold pt-beta's pull past it.
    fetch = replace(FAST, concurrency=2, timeout_seconds=THREAD_DEADLINE_SECONDS)
    pull = PullThrough(source.meta, source.index.simple_url, fetch=fetch)
    try:
        run(pull.ensure("pt-alpha"))
        poll_until(
            lambda: all((path, None) in source.index.requests for path in ALPHA_DOCUMENTS),
            "the background read of pt-alpha's documents, held at the source",
        )
        run(pull.ensure("pt-beta"))  # in slots of its own, or it waits out run's deadline
        assert [str(r.version) for r in head_project(source, "pt-beta").releases] == ["1.0"]
        assert pending(head_project(source, "pt-alpha")) == {"1.0": True, "2.0": True}
    finally:
        source.index.release.set()
        pull.close()
