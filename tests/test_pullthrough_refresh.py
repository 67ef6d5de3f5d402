"""Pull-through's re-checks driven in-process: intervals, failures, what a refresh keeps."""

from __future__ import annotations

import json
import time

from metasrv.config import PullThroughConfig
from metasrv.http.app import create_app
from metasrv.http.fastpath import Served
from metasrv.http.pulling import STALE_HEADER
from metasrv.index.pullthrough import PullThrough
from metasrv.names import normalize_name
from metasrv.repo.storage import Storage
from tests.deadlines import poll_until
from tests.distributions import build_wheel
from tests.test_fastpath import Connection, Counted, get, serving
from tests.test_pullthrough import Source, configure, source
from tests.test_pullthrough_mutants import ALPHA, head_project, pending, pulling, run, settled

__all__ = ["source"]  # the fixture, shared with the end-to-end pull-through tests


def test_a_refresh_that_fails_keeps_the_project_and_marks_it_stale_until_one_works(
    source: Source,
) -> None:
    """Either way the source was asked: touches within the interval after a re-check ask nothing."""
    with pulling(source, refresh=0) as (pull, lines):
        run(pull.ensure("pt-alpha"))
        before = Storage(source.meta).resolve(None)
        source.index.behaviour.faults["/simple/pt-alpha/"] = ["500"] * 2
        pull.touch(ALPHA)  # refresh 0: re-checked, and failing
        poll_until(lambda: ALPHA in pull.stale, "the failed refresh marked pt-alpha stale")
        problem = pull.stale[ALPHA].removeprefix("the source failed: ")
        assert problem.endswith("HTTP 500 after 2 attempts")
        poll_until(lambda: any("refresh failed" in line for line in lines), "the failure logged")
        assert f"pull-through pt-alpha: refresh failed: {problem}" in lines
        _touch_within_the_interval(pull)
        pull.touch(ALPHA)  # re-checked, unchanged
        poll_until(lambda: not pull.stale, "a refresh that worked cleared the mark")
        _touch_within_the_interval(pull)
        assert len(lines) == 2  # the pull and the failure: an unchanged page writes nothing
    assert head_project(source, "pt-alpha").releases
    assert Storage(source.meta).resolve(None) == before  # nothing new: nothing committed
    assert source.page_requests("pt-alpha") == 4  # the first pull, two attempts, one re-check


def _touch_within_the_interval(pull: PullThrough) -> None:
    """Touch alpha with an hour's interval, check no re-check started, set the interval back."""
    pull.refresh = 3600
    pull.touch(ALPHA)
    settled(pull)
    assert ("pull", ALPHA) not in pull._inflight
    pull.refresh = 0


def test_a_release_published_later_is_committed_by_a_refresh(source: Source) -> None:
    with pulling(source, refresh=0) as (pull, lines):
        run(pull.ensure("pt-alpha"))
        run(pull.complete("pt-alpha"))
        build_wheel(source.archives, "pt-alpha", "3.0")
        pull.touch(ALPHA)
        poll_until(lambda: "3.0" in pending(head_project(source, "pt-alpha")), "3.0 was committed")
        # What was read of the older releases is kept; only the new file waits to be read.
        assert pending(head_project(source, "pt-alpha")) == {
            "1.0": False,
            "2.0": False,
            "3.0": True,
        }
    messages = [commit.message for commit in source.commits()]
    assert any(message.endswith("\n\n- pt-alpha (refreshed, 3 files)") for message in messages)
    assert any(line.startswith("pull-through pt-alpha: 3 files, ") for line in lines)


def test_a_touch_within_the_refresh_interval_asks_the_source_nothing(source: Source) -> None:
    # As long as this machine has been up: the pull checked the project a moment ago, and a
    # sum where the age belongs would be twice the uptime, past the interval.
    with pulling(source, refresh=max(time.monotonic(), 60.0)) as (pull, _):
        run(pull.ensure("pt-alpha"))
        settled(pull)
        before = set(pull._background)  # the pending metadata's read, waiting for quiet
        pull.touch(ALPHA)
        settled(pull)
        assert pull._background <= before  # no re-check was started
    assert source.page_requests("pt-alpha") == 1


def test_a_touched_project_still_gets_its_pending_metadata_read(source: Source) -> None:
    """Clients reading a project hold background reads back; they must not stop them."""
    with pulling(source) as (pull, _):
        run(pull.ensure("pt-alpha"))
        pull.touch(ALPHA)
        poll_until(
            lambda: not any(pending(head_project(source, "pt-alpha")).values()),
            "the background read ran once clients were idle",
        )
    assert source.page_requests("pt-alpha") == 1


def test_refreshes_of_two_projects_do_not_wait_for_each_other(source: Source) -> None:
    """Each project's re-check is its own: one held at the source must not swallow another's."""
    with pulling(source, refresh=0) as (pull, _):
        run(pull.ensure("pt-alpha"))
        run(pull.ensure("pt-beta"))
        source.index.behaviour.faults["/simple/pt-alpha/"] = ["hold"]
        pull.touch(ALPHA)
        poll_until(lambda: source.page_requests("pt-alpha") == 2, "alpha's re-check is held")
        pull.touch(normalize_name("pt-beta"))
        poll_until(lambda: source.page_requests("pt-beta") == 2, "beta was re-checked meanwhile")
        source.index.release.set()


def _rechecking_every_read(source: Source) -> tuple[Served, PullThrough]:
    """Return the app of a server re-checking a project at each read (refresh = 0), its pull."""
    configure(source.meta, source.index.simple_url, PullThroughConfig(refresh=0))
    app = create_app(source.meta)
    assert isinstance(app, Served)
    pull = app.fast.hot.pulled.pull
    assert pull is not None
    return app, pull


def test_a_page_the_fast_path_sends_still_has_its_project_rechecked(source: Source) -> None:
    app, pull = _rechecking_every_read(source)
    counted = Counted(app)

    def rechecked(times: int) -> None:
        """Wait until the source was asked for the page ``times`` times and nothing is left."""
        # A touch while a re-check is in flight joins it: the next must find none running.
        poll_until(
            lambda: source.page_requests("pt-alpha") == times and not pull._inflight,
            f"request {times} of pt-alpha's page, and nothing left in flight",
        )

    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get("/simple/pt-alpha/"))
        assert connection.response()[0] == 200  # pulled through; its touch re-checks it
        poll_until(
            lambda: not any(pending(head_project(source, "pt-alpha")).values()),
            "the background read of pt-alpha's metadata",
        )
        rechecked(2)
        connection.send(get("/simple/pt-alpha/"))  # a new commit: the app answers
        assert connection.response()[0] == 200
        rechecked(3)
        connection.send(get("/simple/pt-alpha/"))  # nothing committed since: the kept answer
        assert connection.response()[0] == 200
        rechecked(4)
        connection.close()
    assert counted.requests == ["/simple/pt-alpha/"] * 2


def test_an_answer_saying_the_source_failed_is_not_sent_once_it_works_again(
    source: Source,
) -> None:
    configure(source.meta, source.index.simple_url, PullThroughConfig(refresh=0))
    app = create_app(source.meta)
    assert isinstance(app, Served)
    with serving(app) as (_, port):
        connection = Connection(port)

        def headers() -> dict[str, str]:
            """Read pt-alpha's page (each read re-checks it) and return its headers."""
            connection.send(get("/simple/pt-alpha/"))
            status, headers, _ = connection.response()
            assert status == 200
            return headers

        headers()
        poll_until(
            lambda: not any(pending(head_project(source, "pt-alpha")).values()),
            "the background read of pt-alpha's metadata",
        )
        source.index.behaviour.faults["/simple/pt-alpha/"] = ["500"] * 10_000
        poll_until(lambda: STALE_HEADER in headers(), "a page saying the source fails")
        source.index.behaviour.faults.clear()
        poll_until(lambda: STALE_HEADER not in headers(), "a page no longer saying so")
        connection.close()


def test_a_pinned_read_schedules_no_recheck_an_unpinned_one_does(source: Source) -> None:
    app, pull = _rechecking_every_read(source)
    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get("/simple/pt-alpha/"))
        assert connection.response()[0] == 200
        # The pull, then the re-check its answer's touch started (which notes its own time).
        poll_until(
            lambda: source.page_requests("pt-alpha") == 2 and not pull._inflight,
            "pt-alpha pulled and re-checked once, nothing left in flight",
        )
        sha = Storage(source.meta).resolve(None)
        checked = pull._checked[ALPHA]  # when it was last checked or a re-check scheduled
        # The read API's answers (the hot path's): a touch happens before the answer is sent.
        for path in (f"/v1/projects/pt-alpha?at={sha}", f"/at/{sha}/simple/pt-alpha/"):
            connection.send(get(path))
            assert connection.response()[0] == 200
            assert pull._checked[ALPHA] == checked, path
        connection.send(get("/v1/projects/pt-alpha"))
        assert connection.response()[0] == 200
        assert pull._checked[ALPHA] > checked
        connection.close()


def test_a_release_read_right_after_a_pull_reads_its_pending_metadata_first(
    source: Source,
) -> None:
    app = create_app(source.meta)
    assert isinstance(app, Served)
    with serving(app) as (_, port):
        connection = Connection(port)
        connection.send(get("/simple/pt-beta/"))
        assert connection.response()[0] == 200  # pulled: its metadata is pending
        # Before the background read (a second of quiet away): the route reads it, not the
        # hot path, which would answer "pending".
        connection.send(get("/v1/projects/pt-beta/1.0"))
        status, _, body = connection.response()
        connection.close()
    assert status == 200
    assert json.loads(body)["requires-dist"] == ["pt-alpha<2"]
