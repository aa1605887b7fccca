"""Incremental forever: unchanged files are not read again; changed ones store only new chunks."""

from __future__ import annotations

import os
import random

import pytest

from agents.runtime.engine import Repository
from agents.runtime.engine import backup as backup_module
from agents.runtime.engine.format import (
    DIR,
    FILE,
    HARDLINK,
    SYMLINK,
    Entry,
    decode_entries,
    encode_entry,
    entry_at,
    scan_entries,
)
from agents.runtime.engine.layout import DATA_PREFIX, pack_blob
from tests.runtime.engine.conftest import (
    FAST_KDF,
    PASSPHRASE,
    SMALL_CHUNKS,
    restored,
    tree_snapshot,
    write_random,
)
from tests.runtime.engine.helpers import backup, flip, log_opens, opened, restore


def test_it_does_not_reread_unchanged_files(any_repo, source, tmp_path, monkeypatch):
    repo = any_repo
    log = tmp_path / "logs" / "opens.log"
    log_opens(monkeypatch, log)  # (outside the source's parents: their metadata stays put)
    first = backup(repo, source)
    assert len(opened(log)) == first.files_read == 4
    log.unlink()
    second = backup(repo, source)
    assert opened(log) == []
    assert second.files_read == 0 and second.files_unchanged == 4
    # At most a metadata chunk is new: the source's parent folders (under pytest's shared
    # temporary root) may change under concurrent test sessions.
    assert second.new_bytes < 10_000
    assert len(set(first.packs) & set(second.packs)) >= len(first.packs) - 1


def test_it_rereads_only_the_changed_file_and_stores_only_its_new_chunks(
    repo, tmp_path, monkeypatch
):
    src = tmp_path / "src"
    big = bytearray(write_random(src / "big.bin", 2_000_000, 11))
    write_random(src / "other.bin", 100_000, 12)
    backup(repo, src)
    big[1_000_000:1_000_010] = b"X" * 10  # same size, new content
    (src / "big.bin").write_bytes(big)
    log = tmp_path / "logs" / "opens.log"
    log_opens(monkeypatch, log)
    second = backup(repo, src)
    assert opened(log) == [os.fsencode(src / "big.bin")]
    assert second.new_bytes < 200_000  # a couple of 16 KiB-average chunks, not 2 MB
    restore(repo, tmp_path / "out")
    assert (restored(tmp_path / "out", src) / "big.bin").read_bytes() == big


def test_it_keeps_most_chunks_after_an_insert_shifts_the_data(repo, tmp_path):
    src = tmp_path / "src"
    data = write_random(src / "f", 3_000_000, 21)
    first = backup(repo, src)
    shifted = data[:1_500_000] + b"inserted bytes!" + data[1_500_000:]
    (src / "f").write_bytes(shifted)
    second = backup(repo, src)
    assert first.new_bytes > 2_900_000
    assert second.new_bytes < 0.05 * len(shifted)  # content-defined cut points resynchronise


def test_it_stores_identical_files_once(repo, tmp_path):
    src = tmp_path / "src"
    data = write_random(src / "a", 500_000, 5)
    for i in range(5):
        (src / f"copy{i}").write_bytes(data)
    result = backup(repo, src)
    assert result.logical_bytes == 3_000_000
    assert result.new_bytes < 600_000


def test_workers_meeting_the_same_chunks_store_them_once(repo, memory_store, tmp_path, monkeypatch):
    monkeypatch.setattr(backup_module, "BATCH_FILES", 1)  # each file its own task: both workers
    src = tmp_path / "src"
    data = write_random(src / "a", 400_000, 6)
    for i in range(30):
        (src / f"copy{i:02}").write_bytes(data)
    result = backup(repo, src, workers=2)
    assert result.logical_bytes == 31 * 400_000
    packs = sum(b.size for b in memory_store.list(DATA_PREFIX))
    assert packs < 400_000 + 50_000  # one copy (random data: no compression) and metadata
    target = tmp_path / "restore"
    assert restore(repo, target).status == "completed"
    assert tree_snapshot(restored(target, src)) == tree_snapshot(src)


def test_it_detects_a_change_that_keeps_size_and_mtime_through_ctime(repo, tmp_path):
    src = tmp_path / "src"
    path = src / "f"
    write_random(path, 10_000, 1)
    st = os.stat(path)
    backup(repo, src)
    write_random(path, 10_000, 2)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # hides the change from mtime
    second = backup(repo, src)
    assert second.files_read == 1
    restore(repo, tmp_path / "out")
    assert tree_snapshot(restored(tmp_path / "out", src)) == tree_snapshot(src)


def test_it_uses_the_local_cache_and_rebuilds_without_it(memory_store, tmp_path):
    src = tmp_path / "src"
    write_random(src / "f", 400_000, 3)
    repo = Repository.init(memory_store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    backup(repo, src, cache_dir=tmp_path / "cache")
    assert any((tmp_path / "cache").rglob("index.bin"))
    (src / "g").write_bytes(random.Random(4).randbytes(1000))
    with_cache = backup(
        Repository.open(memory_store, PASSPHRASE), src, cache_dir=tmp_path / "cache"
    )
    without = backup(Repository.open(memory_store, PASSPHRASE), src, cache_dir=tmp_path / "new")
    assert with_cache.files_read == 1 and without.files_read == 0
    assert without.new_bytes < 10_000  # at most metadata: nothing re-stored


def test_a_damaged_previous_recovery_point_means_reading_everything_again(
    repo, memory_store, tmp_path
):
    src = tmp_path / "src"
    write_random(src / "a", 100_000, 1)
    first = backup(repo, src)
    rp = repo.recovery_point(first.recovery_point)
    pno, off, _len, _raw = repo.index.get(bytes.fromhex(rp.meta[0]))
    flip(memory_store, pack_blob(repo.index.pack_ids[pno]), off + 20)
    second = backup(Repository.open(memory_store, "correct horse battery staple"), src)
    assert second.status == "completed_with_warnings"
    assert second.files_read == 1
    assert "could not be read" in second.warnings[0]["reason"]


@pytest.mark.timeout(60)
def test_many_unchanged_files_behind_a_changed_one_do_not_stall_the_backup(
    repo, tmp_path, monkeypatch
):
    src = tmp_path / "src"
    for i in range(40):
        write_random(src / f"f{i:02}", 1000, i)
    backup(repo, src)
    for i in (0, 1, 2):  # changed files first in tree order, then many unchanged ones
        write_random(src / f"f{i:02}", 1000, 100 + i)
    monkeypatch.setattr(backup_module, "BATCH_FILES", 2)
    monkeypatch.setattr(backup_module, "MAX_PENDING", 10)
    second = backup(repo, src)
    assert second.status == "completed"
    assert second.files_read == 3 and second.files_unchanged == 37


def test_the_previous_point_is_located_as_decoded_and_copied_through_unchanged(
    repo, source, tmp_path
):
    """A backup compares the previous point where its entries lie (``scan_entries``): the
    same entries, boundaries and bytes as ``decode_entries``, a partial entry left for the
    next chunk; and a no-change backup writes every item back byte for byte."""
    entries = [
        Entry(b"/d", DIR, 0o755, 1, 2, 10, 11, 12, user=b"u", group=b"g"),
        Entry(
            b"/d/f",
            FILE,
            0o644,
            1,
            2,
            20,
            21,
            22,
            9,
            content=[(b"a" * 32, 4), (b"b" * 32, 5)],
            xattrs=[(b"user.k", b"v")],
        ),
        Entry(b"/d/l", SYMLINK, 0o777, 0, 0, 30, 31, 32, target=b"f"),
        Entry(
            b"/d/h",
            HARDLINK,
            0o644,
            3,
            4,
            40,
            41,
            42,
            9,
            2,
            target=b"/d/f",
            content=[(b"a" * 32, 4)],
        ),
    ]
    buf = b"".join(encode_entry(e) for e in entries)
    for cut in (len(buf), len(buf) - 3):
        decoded, end = decode_entries(buf[:cut])
        refs, scanned_end = scan_entries(buf[:cut])
        assert scanned_end == end
        assert [r[0] for r in refs] == [e.path for e in decoded]
        assert [r[4][r[2] : r[3]] for r in refs] == [e.encoded for e in decoded]
        assert [entry_at(r) for r in refs] == decoded
    assert decode_entries(buf)[0] == entries

    first = backup(repo, source)
    second = backup(repo, source)
    assert second.files_unchanged == first.files_read
    points = repo.list_recovery_points()
    old, new = (
        [e.encoded for e in repo.iter_entries(rp) if e.path.startswith(bytes(source))]
        for rp in points[-2:]
    )
    assert new == old and len(new) > 4
