"""Progress events: schema, phases, final event, throttling."""

from __future__ import annotations

import json

from agents.runtime.engine import ListSink, ThrottledSink, run_verify
from tests.runtime.engine.helpers import backup, restore


def test_backup_emits_phases_counters_and_a_final_event(repo, source, tmp_path):
    sink = ListSink()
    result = backup(repo, source, sink=sink)
    for e in sink.events:
        json.dumps(e)  # JSON-able
        assert e["schema"] == 1
    phases = [e["phase"] for e in sink.of_type("progress")]
    assert phases[0] == "scanning" and "backing_up" in phases and "finalizing" in phases
    last = sink.of_type("progress")[-1]
    assert last["bytes_done"] == result.logical_bytes
    assert last["files_done"] == 4
    assert {"rate_bps", "eta_s", "current", "new_bytes", "stored_bytes", "files_total"} <= set(last)
    final = sink.events[-1]
    assert final["type"] == "finished" and final["status"] == "completed"
    assert final["recovery_point"] == result.recovery_point


def test_restore_and_verify_report_their_phase(repo, source, tmp_path):
    backup(repo, source)
    sink = ListSink()
    restore(repo, tmp_path / "out", sink=sink)
    assert {e["phase"] for e in sink.of_type("progress")} == {"restoring"}
    assert sink.events[-1]["type"] == "finished"
    sink = ListSink()
    run_verify(repo, sink=sink)
    assert {e["phase"] for e in sink.of_type("progress")} == {"verifying"}


def test_throttled_sink_limits_the_rate_but_passes_phase_changes_and_the_final_event():
    clock = [0.0]
    inner = ListSink()
    sink = ThrottledSink(inner, max_per_second=2, clock=lambda: clock[0])
    base = {"schema": 1, "type": "progress", "phase": "backing_up"}
    for i in range(100):
        clock[0] = i * 0.01  # 100 events in one second
        sink.emit({**base, "n": i})
    sink.emit({**base, "phase": "finalizing", "n": 100})
    sink.emit({"schema": 1, "type": "finished", "status": "completed"})
    got = [e.get("n") for e in inner.events]
    assert got[:2] == [0, 50] and len(got) == 4
    assert inner.events[-2]["phase"] == "finalizing" and inner.events[-1]["type"] == "finished"
