"""The compact chunk index."""

from __future__ import annotations

import os

from agents.runtime.engine.index import ChunkIndex


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
