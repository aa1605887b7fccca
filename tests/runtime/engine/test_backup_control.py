"""Cancelling a backup, usage figures, pack ids for garbage collection, vanished packs."""

from __future__ import annotations

import threading
import time

import pyfastcdc.cy.fastcdc as compiled
import pytest

from agents.runtime.blobstore.base import StorageUnavailable
from agents.runtime.engine import ChunkerParams, ListSink, Repository, chunkers, run_verify
from agents.runtime.engine.layout import DATA_PREFIX, manifest_blob, pack_blob, pack_id_of
from tests.runtime.engine.conftest import PASSPHRASE, restored, tree_snapshot, write_random
from tests.runtime.engine.helpers import backup, remove, restore


def test_cancel_stops_a_backup_quickly_and_leaves_the_repository_consistent(
    repo, memory_store, tmp_path
):
    src = tmp_path / "src"
    write_random(src / "first", 10_000, 0)
    first = backup(repo, src)
    for i in range(200):
        write_random(src / "many" / f"f{i:03}", 200_000, i)
    cancel = threading.Event()

    class CancelSoon(ListSink):
        def emit(self, event):
            super().emit(event)
            if event["type"] == "progress" and event["bytes_done"] > 2_000_000:
                cancel.set()
                self.cancelled_at = time.monotonic()

    sink = CancelSoon()
    result = backup(repo, src, cancel=cancel, sink=sink)
    stopped = time.monotonic()
    assert result.status == "cancelled" and result.recovery_point is None
    assert "no recovery point" in result.message
    assert stopped - sink.cancelled_at < 1.5
    assert sink.events[-1]["status"] == "cancelled"
    reopened = Repository.open(memory_store, PASSPHRASE)
    assert [rp.id for rp in reopened.list_recovery_points()] == [first.recovery_point]
    assert run_verify(reopened).ok
    again = backup(reopened, src)
    assert again.status == "completed"
    assert again.new_bytes < 40_000_000 - 1_000_000  # the cancelled run's packs are reused


def test_it_reports_usage_and_the_packs_a_recovery_point_references(repo, memory_store, tmp_path):
    src = tmp_path / "src"
    write_random(src / "a", 1_000_000, 1)
    (src / "text").write_bytes(b"compressible " * 50_000)
    first = backup(repo, src)
    assert first.logical_bytes == 1_650_000
    assert first.logical_bytes <= first.new_bytes < first.logical_bytes + 10_000  # + metadata
    assert first.stored_bytes < first.new_bytes  # compression paid
    stored = {pack_id_of(b.name) for b in memory_store.list(DATA_PREFIX)}
    assert set(first.packs) == stored
    assert first.stored_bytes == sum(len(memory_store.get(pack_blob(p))) for p in first.packs)
    (src / "b").write_bytes(b"new file")
    second = backup(repo, src)
    assert second.new_bytes < 10_000
    # every data pack is still referenced (a pack holding only the old metadata may not be)
    assert len(set(first.packs) & set(second.packs)) >= len(first.packs) - 1
    rp = repo.recovery_point(second.recovery_point)
    assert rp.packs == second.packs and rp.stats["logical_bytes"] == 1_650_008


def test_packs_removed_by_garbage_collection_are_not_deduplicated_against(
    repo, memory_store, tmp_path
):
    src = tmp_path / "src"
    write_random(src / "a", 600_000, 1)
    first = backup(repo, src)
    for p in first.packs:  # the portal expired the only recovery point and collected its packs
        remove(memory_store, pack_blob(p))
    remove(memory_store, manifest_blob(first.recovery_point))
    (src / "a").touch()
    reopened = Repository.open(memory_store, PASSPHRASE)
    again = backup(reopened, src)
    assert again.new_bytes >= 600_000
    restore(reopened, tmp_path / "out")
    assert tree_snapshot(restored(tmp_path / "out", src)) == tree_snapshot(src)


def test_the_compiled_chunker_is_in_use():
    assert compiled.__file__.endswith(".so")
    assert chunkers.FastCDC is compiled.FastCDC
    data = bytes(range(256)) * 40_000  # 10 MB
    started = time.perf_counter()
    chunks = list(chunkers.make_chunker(repo_params()).cut_buf(data))
    assert time.perf_counter() - started < 0.5  # the pure-Python path needs > 1 s
    assert sum(c.length for c in chunks) == len(data)


def repo_params():
    return ChunkerParams()


def test_a_storage_failure_fails_the_backup_with_the_storage_error_and_keeps_the_repository(
    repo, memory_store, tmp_path
):
    src = tmp_path / "src"
    write_random(src / "a", 10_000, 1)
    first = backup(repo, src)
    write_random(src / "b", 2_000_000, 2)
    original = memory_store.put

    def put(name, data):
        if name.startswith(DATA_PREFIX):
            raise StorageUnavailable("the storage account could not be reached")
        original(name, data)

    memory_store.put = put
    with pytest.raises(StorageUnavailable, match="could not be reached"):
        backup(repo, src)
    memory_store.put = original
    reopened = Repository.open(memory_store, PASSPHRASE)
    assert [rp.id for rp in reopened.list_recovery_points()] == [first.recovery_point]
    assert backup(reopened, src).status == "completed"


class CacheTooSmall(Exception):
    pass


def test_a_first_backup_checks_the_cache_against_the_data_counted_beside_the_walk(
    repo, memory_store, tmp_path
):
    # No previous point to size the cache check by: the running count of the first backup
    # is the estimate, and a refusal from check_space stops the backup with that refusal.
    src = tmp_path / "src"
    for i in range(200):
        write_random(src / f"f{i:03}", 200_000, i)
    asked: list[int] = []

    def check_space(data_bytes: int) -> None:
        asked.append(data_bytes)
        if data_bytes > 1_000_000:
            raise CacheTooSmall(f"backing up {data_bytes} bytes needs more cache room")

    with pytest.raises(CacheTooSmall, match="needs more cache room"):
        backup(repo, src, check_space=check_space)
    assert asked[0] == 0 and max(asked) == 200 * 200_000
    reopened = Repository.open(memory_store, PASSPHRASE)
    assert reopened.list_recovery_points() == []
    # With room enough, the same first backup completes.
    done = backup(reopened, src, check_space=lambda data_bytes: None)
    assert done.status == "completed"
