"""The compact chunk index."""

from __future__ import annotations

import io
import os
import random
import struct

import pytest
import zstandard

from agents.runtime.engine import index as index_module
from agents.runtime.engine.crypto import Sealer
from agents.runtime.engine.errors import IntegrityError
from agents.runtime.engine.format import PACK_ROW
from agents.runtime.engine.index import ChunkIndex
from agents.runtime.engine.layout import index_blob, pack_blob
from agents.runtime.engine.repository import Repository
from tests.runtime.engine.conftest import PASSPHRASE


def test_it_finds_what_it_stored_and_grows():
    idx = ChunkIndex()
    p = idx.add_pack(b"p" * 16, 123)
    ids = [os.urandom(32) for _ in range(20_000)]
    for i, cid in enumerate(ids):
        assert idx.add(cid, p, i, i + 1, i + 2)
    assert not idx.add(ids[5], p, 0, 0, 0)  # already there: unchanged
    assert len(idx) == 20_000
    assert idx.get(ids[5]) == (p, 5, 6, 7)
    assert all(cid in idx for cid in ids)
    assert os.urandom(32) not in idx


def test_a_workers_pack_header_is_indexed_in_one_call():
    """``add_packed`` takes the rows as the pack header stores them: every chunk is found
    where the header says, one already in a live pack is neither re-indexed nor counted as
    new, one in a pack gone from storage is indexed anew; growing on the way loses nothing."""
    idx = ChunkIndex()
    rng = random.Random(8)
    first = [(rng.randbytes(32), i * 100, 90, 1000 + i) for i in range(30_000)]
    a = idx.add_pack(b"a" * 16, 1)
    assert idx.add_packed(a, _header(first), sum(r[3] for r in first)) == sum(r[3] for r in first)
    assert len(idx) == 30_000
    assert all(idx.get(cid) == (a, off, n, raw) for cid, off, n, raw in first)
    fresh = [(rng.randbytes(32), 7, 8, 9)]
    again = first[:3] + fresh  # three chunks another worker packed first
    b = idx.add_pack(b"b" * 16, 1)
    assert idx.add_packed(b, _header(again), sum(r[3] for r in again)) == 9
    assert len(idx) == 30_001
    assert idx.get(first[0][0])[0] == a and idx.get(fresh[0][0]) == (b, 7, 8, 9)
    idx.mark_dead(a)
    c = idx.add_pack(b"c" * 16, 1)
    assert idx.add_packed(c, _header(first[:2]), first[0][3] + first[1][3]) == 2001
    assert idx.get(first[1][0]) == (c, 100, 90, 1001) and first[2][0] not in idx
    assert len(idx) == 30_001
    back = ChunkIndex.load(idx.dump())
    assert back.get(fresh[0][0]) == (b, 7, 8, 9) and back.get(first[0][0])[0] == c


def _header(rows) -> bytes:
    return b"".join(PACK_ROW.pack(*row) for row in rows)


def test_it_costs_at_most_61_bytes_per_chunk():
    idx = ChunkIndex()
    p = idx.add_pack(b"p" * 16, 1)
    for _ in range(50_000):
        idx.add(os.urandom(32), p, 0, 0, 0)
    assert idx.memory_bytes() / len(idx) <= 61


def test_it_round_trips_through_its_cache_form():
    idx = ChunkIndex()
    p = idx.add_pack(b"a" * 16, 10)
    q = idx.add_pack(b"b" * 16, 20)
    ids = [os.urandom(32) for _ in range(3000)]
    for i, cid in enumerate(ids):
        idx.add(cid, p if i % 2 else q, i, 1, 1)
    idx.mark_dead(q)
    again = ChunkIndex.load(idx.dump())
    assert again.get(ids[1]) == (p, 1, 1, 1)
    assert again.get(ids[0]) is None  # in the dead pack
    assert again.pack_ids == [b"a" * 16, b"b" * 16]


def test_a_chunk_of_a_dead_pack_can_be_stored_again():
    idx = ChunkIndex()
    p = idx.add_pack(b"a" * 16, 10)
    cid = os.urandom(32)
    idx.add(cid, p, 1, 2, 3)
    idx.mark_dead(p)
    assert cid not in idx
    q = idx.add_pack(b"b" * 16, 10)
    assert idx.add(cid, q, 4, 5, 6)
    assert idx.get(cid) == (q, 4, 5, 6)


def _index_of(chunks: int) -> tuple[ChunkIndex, list[bytes]]:
    idx = ChunkIndex()
    p = idx.add_pack(b"a" * 16, 10)
    q = idx.add_pack(b"b" * 16, 20)
    ids = [os.urandom(32) for _ in range(chunks)]
    for i, cid in enumerate(ids):
        idx.add(cid, p if i % 2 else q, i, 1, 1)
    idx.mark_dead(q)
    return idx, ids


@pytest.fixture
def small_frames(monkeypatch):
    monkeypatch.setattr(index_module, "FRAME", 4096)  # many frames from a small index


def test_its_cache_file_is_sealed_frames_that_load_back_in_place(small_frames):
    idx, ids = _index_of(3000)
    sealer = Sealer(os.urandom(32))
    f = io.BytesIO()
    written = idx.save_frames(f, sealer.seal)
    assert written == len(f.getvalue()) == idx.cache_size()
    f.seek(0)
    again = ChunkIndex.load_frames(f, sealer.open)
    assert len(again) == 3000
    assert again.get(ids[1]) == idx.get(ids[1]) == (0, 1, 1, 1)
    assert again.get(ids[0]) is None  # in the dead pack
    assert again.pack_ids == [b"a" * 16, b"b" * 16]


def test_a_cut_extended_or_tampered_cache_file_is_refused(small_frames):
    idx, _ = _index_of(3000)
    sealer = Sealer(os.urandom(32))
    f = io.BytesIO()
    idx.save_frames(f, sealer.seal)
    raw = f.getvalue()
    for bad in (raw[: len(raw) // 2], raw[:-1], raw + raw[4:200]):
        with pytest.raises(ValueError):
            ChunkIndex.load_frames(io.BytesIO(bad), sealer.open)
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 1
    with pytest.raises(IntegrityError):
        ChunkIndex.load_frames(io.BytesIO(bytes(flipped)), sealer.open)
    # the first frame's length word says "last": its associated data no longer matches
    marked = bytearray(raw)
    marked[7] |= 0x80
    with pytest.raises((IntegrityError, ValueError)):
        ChunkIndex.load_frames(io.BytesIO(bytes(marked)), sealer.open)


def test_an_index_delta_reads_as_every_haven_reads_it(repo):
    """``seal(zstd(zstd("HVI1" ...)))``: a delta written now opens the way Haven before
    2026-12-07 opened it (two zstd frames inside the seal), and one written then (both
    frames at level 3) loads beside it; each chunk is found in its own delta's pack."""
    rng = random.Random(3)
    new_rows = [(rng.randbytes(32), i * 100, 90, 1000 + i) for i in range(500)]
    old_rows = [(rng.randbytes(32), i * 100, 80, 2000 + i) for i in range(500)]
    name = repo.write_index([(b"n" * 16, 50_000, new_rows)])
    inner = zstandard.ZstdDecompressor().decompress(
        repo.sealer.open(repo.store.get(name), name.encode()), max_output_size=1 << 24
    )
    plain = zstandard.ZstdDecompressor().decompress(inner, max_output_size=1 << 24)
    assert plain.startswith(b"HVI1") and len(plain) == 4 + 16 + 12 + 500 * PACK_ROW.size
    older = index_blob("0" * 32)
    packed = b"".join(PACK_ROW.pack(*r) for r in old_rows)
    then = b"HVI1" + b"o" * 16 + struct.pack("<QI", 60_000, len(old_rows)) + packed
    repo.put_sealed(older, zstandard.ZstdCompressor(level=3).compress(then))
    for pack_id in (b"n" * 16, b"o" * 16):  # (a delta's packs are live while stored)
        repo.store.put(pack_blob(pack_id), b"pack")
    idx = Repository.open(repo.store, PASSPHRASE).load_index()
    for pack_id, rows in ((b"n" * 16, new_rows), (b"o" * 16, old_rows)):
        for cid, off, length, raw in rows:
            pack_no, o, n, r = idx.get(cid)
            assert (idx.pack_ids[pack_no], o, n, r) == (pack_id, off, length, raw)


def test_an_index_delta_flipped_or_moved_under_another_name_is_refused(repo):
    """Whoever can write the storage but holds no key cannot feed a backup chunk locations:
    a delta with one byte flipped, or a valid delta stored under another delta's name (the
    name is bound into the seal), fails authentication instead of being read."""
    rows = [(random.Random(5).randbytes(32), 0, 90, 1000)]
    name = repo.write_index([(b"n" * 16, 50_000, rows)])
    repo.store.put(pack_blob(b"n" * 16), b"pack")
    sealed = repo.store.get(name)
    flipped = bytearray(sealed)
    flipped[len(flipped) // 2] ^= 1
    repo.store.backend.delete(name)
    repo.store.put(name, bytes(flipped))
    with pytest.raises(IntegrityError):
        Repository.open(repo.store, PASSPHRASE).load_index()
    repo.store.backend.delete(name)
    repo.store.put(index_blob("f" * 32), sealed)
    with pytest.raises(IntegrityError):
        Repository.open(repo.store, PASSPHRASE).load_index()
