"""PortalSink: at most N posts a second, heartbeats, cancel from the answer."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from agents.runtime.jobs.sink import PortalSink


def progress(n: int) -> dict:
    return {"type": "progress", "phase": "backing_up", "files_done": n}


@pytest.mark.alone
def test_it_posts_at_most_four_times_a_second_and_always_the_last_state():
    posted = []
    sink = PortalSink(
        lambda e: posted.append((time.monotonic(), e)) or {}, max_per_second=4, heartbeat=10
    )
    sink.start()
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < 1.5:
        n += 1
        sink.emit(progress(n))
        time.sleep(0.002)
    sink.close()
    assert 4 <= len(posted) <= 8  # ~4/s over 1.5 s, plus the final flush
    assert posted[-1][1]["files_done"] == n
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(posted)][:-1]
    assert all(gap >= 0.24 for gap in gaps)


@pytest.mark.alone
def test_it_sends_a_heartbeat_while_the_engine_is_quiet():
    posted = []
    sink = PortalSink(lambda e: posted.append(e) or {}, heartbeat=0.1, max_per_second=20).start()
    sink.emit(progress(1))
    time.sleep(0.55)
    sink.close()
    beats = [e for e in posted if e["phase"] != "starting"]  # the first post says "started"
    assert len(beats) >= 3 and all(e["files_done"] == 1 for e in beats)


def test_a_cancel_answer_sets_the_cancel_event():
    sink = PortalSink(lambda e: {"cancel": True}, heartbeat=0.05).start()
    assert sink.cancel.wait(2)
    sink.close()


def test_a_portal_that_is_away_does_not_stop_the_backup():
    def post(event):
        raise ConnectionError("no route to host")

    sink = PortalSink(post, heartbeat=0.05).start()
    sink.emit(progress(1))
    time.sleep(0.2)
    sink.close()
    assert sink.failures >= 1 and not sink.cancel.is_set()


def test_warnings_are_collected_not_posted():
    posted = []
    sink = PortalSink(lambda e: posted.append(e) or {}, heartbeat=10)
    sink.emit({"type": "warning", "path": "/a", "reason": "permission denied"})
    assert sink.warnings == [{"path": "/a", "reason": "permission denied"}] and posted == []
    assert isinstance(sink.cancel, threading.Event)
