"""A chunking process's reading of one file (``chunkers.FileProcessor.process``): the status
each outcome gets, and no descriptor left open by any of them (a worker reads millions)."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from agents.runtime.engine import chunkers
from agents.runtime.engine.crypto import MasterKeys, Sealer
from agents.runtime.engine.index import ChunkIndex
from tests.runtime.engine.conftest import SMALL_CHUNKS


class _Results:
    """The result queue: a full pack's buffer is given back at once."""

    def __init__(self, buffers: chunkers.PackBuffers) -> None:
        self.buffers = buffers

    def put(self, msg) -> None:
        if msg[0] == "pack":
            self.buffers.free.put(msg[2])


@pytest.fixture
def proc():
    ctx = multiprocessing.get_context("fork")
    keys = MasterKeys.generate(SMALL_CHUNKS)
    buffers = chunkers.PackBuffers(ctx, 2, 4 * SMALL_CHUNKS.max_size)
    writer = chunkers.PackWriter(
        0, buffers, _Results(buffers), Sealer(keys.data_key), 2 * SMALL_CHUNKS.max_size
    )
    return chunkers.FileProcessor(keys, ChunkIndex(), 3, writer, chunkers.ClaimTable(ctx))


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _read(proc, path, scan_size=-1, scan_mtime=-1):
    """Every piece of ``path``: (all records, the final status)."""
    records, statuses = [], []
    for piece, status in proc.process(os.fsencode(path), scan_size, scan_mtime):
        records += piece
        statuses.append(status)
    assert all(s is None for s in statuses[:-1])  # (the status comes with the last piece)
    return records, statuses[-1]


def test_each_outcome_leaves_no_descriptor_open(proc, tmp_path):
    small = tmp_path / "small"
    small.write_bytes(os.urandom(1000))
    large = tmp_path / "large"
    large.write_bytes(os.urandom(5 * SMALL_CHUNKS.max_size))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    (tmp_path / "folder").mkdir()
    before = _open_fds()
    outcomes = {name: _read(proc, tmp_path / name) for name in
                ("small", "large", "empty", "folder", "gone")}  # fmt: skip
    proc.end_task()  # (the folder's descriptor is kept while its files come in a row)
    assert _open_fds() == before
    assert outcomes["small"][1][0] == "ok" and outcomes["small"][1][5] == 1000
    assert len(outcomes["small"][0]) == 1  # a small file: one chunk
    assert outcomes["large"][1][0] == "ok" and len(outcomes["large"][0]) > 1
    assert sum(n for _cid, n, _new in outcomes["large"][0]) == 5 * SMALL_CHUNKS.max_size
    assert outcomes["empty"][0] == [] and outcomes["empty"][1][0] == "ok"
    assert outcomes["folder"][1][:2] == ("skip", chunkers.REPLACED)
    assert outcomes["gone"][1][:2] == ("skip", "vanished before it could be read")


def test_a_small_file_that_grows_before_its_read_is_read_whole_with_a_warning(
    proc, tmp_path, monkeypatch
):
    # The file is open and fstat'ed, its one-read path chosen, when another program appends
    # past the chunker's minimum: the general path reads it, and the descriptor it was handed
    # is closed at the end.
    log = tmp_path / "growing.log"
    log.write_bytes(b"x" * 100)
    original = chunkers.read_xattrs

    def read_xattrs(target):
        with open(log, "ab") as f:
            f.write(b"y" * (2 * SMALL_CHUNKS.min_size))
        return original(target)

    monkeypatch.setattr(chunkers, "read_xattrs", read_xattrs)
    before = _open_fds()
    records, status = _read(proc, log)
    proc.end_task()
    assert _open_fds() == before
    assert status[:2] == ("warn", "changed while it was being read; stored as read")
    assert status[5] == 100 + 2 * SMALL_CHUNKS.min_size
    assert sum(n for _cid, n, _new in records) == status[5]


def test_a_file_read_in_pieces_and_dropped_unfinished_is_closed(proc, tmp_path):
    # A caller that stops early (an exception between two pieces) closes the generator: the
    # file goes with it.
    large = tmp_path / "large"
    large.write_bytes(os.urandom(5 * SMALL_CHUNKS.max_size))
    before = _open_fds()
    pieces = proc.process(os.fsencode(large), -1, -1)
    assert _open_fds() != before  # open, waiting to be read
    next(iter(pieces))
    pieces.close()
    proc.end_task()
    assert _open_fds() == before
