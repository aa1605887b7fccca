"""A slow link: cancelling while uploads are stalled, and progress that follows the uploads."""

from __future__ import annotations

import threading
import time

import pytest

from agents.runtime.blobstore.memory import MemoryStore
from agents.runtime.engine import ListSink, Repository, run_verify
from agents.runtime.engine.layout import DATA_PREFIX
from tests.runtime.engine.conftest import (
    FAST_KDF,
    PASSPHRASE,
    SMALL_CHUNKS,
    restored,
    tree_snapshot,
    write_random,
)
from tests.runtime.engine.helpers import GuardedStore, backup, restore

PACK = 256 * 1024


class StallingStore(GuardedStore):
    """Pack uploads hang until ``release`` is set (a link that has stopped moving)."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.stalled = 0
        self.busy = 0

    def put(self, name, data):
        if name.startswith(DATA_PREFIX) and not self.release.is_set():
            with self.lock:
                self.stalled += 1
                self.busy += 1
            try:
                self.release.wait(60)
            finally:
                with self.lock:
                    self.busy -= 1
        super().put(name, data)


class TimedSink(ListSink):
    def emit(self, event):
        super().emit({**event, "at": time.monotonic()})


@pytest.mark.alone
def test_cancel_returns_quickly_while_uploads_are_stalled(tmp_path):
    store = StallingStore()
    repo = Repository.init(store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    for i in range(40):
        write_random(src / f"f{i:02}", 200_000, i)
    cancel = threading.Event()
    sink = TimedSink()
    marks: dict[str, float] = {}

    def cancel_once_stuck():
        while store.stalled < 2:  # both upload threads hang, the pipeline waits for a slot
            time.sleep(0.01)
        marks["stuck"] = time.monotonic()
        time.sleep(0.6)
        marks["cancel"] = time.monotonic()
        cancel.set()

    threading.Thread(target=cancel_once_stuck, daemon=True).start()
    try:
        result = backup(repo, src, cancel=cancel, sink=sink, upload_threads=2, workers=2)
        returned = time.monotonic()
        assert result.status == "cancelled" and result.recovery_point is None
        assert returned - marks["cancel"] < 2.0
        assert sink.events[-1]["type"] == "finished"
        assert sink.events[-1]["status"] == "cancelled"
        # progress kept coming while the pipeline waited for an upload slot ...
        waiting = [
            e for e in sink.of_type("progress") if marks["stuck"] + 0.1 < e["at"] < marks["cancel"]
        ]
        assert len(waiting) >= 2
        # ... and its rate counts only what is stored, not what waits for the stalled link
        last = waiting[-1]
        assert last["rate_bps"] * last["elapsed_s"] < last["bytes_done"] - PACK
        assert store.stalled == 2  # nothing else reached the store's pack uploads
    finally:
        store.release.set()
    deadline = time.monotonic() + 10
    while store.busy and time.monotonic() < deadline:  # the abandoned uploads finish
        time.sleep(0.01)

    reopened = Repository.open(store, PASSPHRASE)
    assert reopened.list_recovery_points() == []
    again = backup(reopened, src)
    assert again.status == "completed"
    assert again.new_bytes < 8_000_000 - PACK  # the packs stored after all are reused
    assert run_verify(reopened).ok
    target = tmp_path / "restore"
    assert restore(reopened, target).status == "completed"
    assert tree_snapshot(restored(target, src)) == tree_snapshot(src)
