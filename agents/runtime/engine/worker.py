"""The chunking worker processes: read, chunk, hash, compress and seal files in batches.

Python overhead per small chunk makes threads useless here (RECIPES.md: two processes are ~2x,
two threads ~1.1x). Workers are forked so they inherit the master keys and a read-only snapshot
of the chunk index (chunks already stored are not compressed again). Each worker sends back,
per file and in order, records ``(chunk id, plain length, sealed chunk or None)``; ``None`` means
"already stored" and ``HOLE_ID`` marks an unstored run of zeros (sparse file hole).
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import stat
from typing import Any

import zstandard
from pyfastcdc.cy import FastCDC  # the compiled chunker: never the 100x slower pure-Python one

from agents.runtime.engine.crypto import ChunkerParams, MasterKeys, Sealer, chunk_hasher
from agents.runtime.engine.format import HOLE_ID, encode_chunk
from agents.runtime.engine.index import ChunkIndex

FLUSH_BYTES = 4 << 20  # send results at least every 4 MiB of sealed data
SPARSE_MIN = 1 << 20

_O_NOATIME = getattr(os, "O_NOATIME", 0)


def make_chunker(params: ChunkerParams) -> FastCDC:
    return FastCDC(
        params.avg_size, min_size=params.min_size, max_size=params.max_size, seed=params.seed
    )


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: a killed backup leaves no orphans
    except (OSError, AttributeError):
        pass


def worker_main(task_q, result_q, keys: MasterKeys, index: ChunkIndex, level: int) -> None:
    _die_with_parent()
    parent = os.getppid()
    proc = FileProcessor(keys, index, level)
    while True:
        try:
            task = task_q.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            return
        task_id, files = task
        out: list[Any] = []
        size = 0
        for seq, path, scan_size, scan_mtime in files:
            for records, status in proc.process(path, scan_size, scan_mtime):
                out.append((seq, records, status))
                size += sum(len(r[2]) for r in records if r[2] is not None)
                if size >= FLUSH_BYTES:
                    result_q.put(("part", task_id, out))
                    out, size = [], 0
        result_q.put(("done", task_id, out))


class FileProcessor:
    def __init__(self, keys: MasterKeys, index: ChunkIndex, level: int):
        self.params = keys.chunker
        self.cdc = make_chunker(keys.chunker)
        self.sealer = Sealer(keys.data_key)
        self.hash = chunk_hasher(keys.id_key)
        self.cctx = zstandard.ZstdCompressor(level=level) if level > 0 else None
        self.index = index
        self.seen: set[bytes] = set()
        self.buf = bytearray(max(2 * self.params.max_size, 8 << 20))
        self.opens = 0

    def process(self, path: bytes, scan_size: int, scan_mtime: int):
        """Yields (records, status) pieces; status is None until the last piece, then
        ``("ok", None)``, ``("warn", reason)`` (stored, but read while changing) or
        ``("skip", reason)`` (not stored)."""
        try:
            fd = self._open(path)
        except FileNotFoundError:
            yield [], ("skip", "vanished before it could be read")
            return
        except PermissionError:
            yield [], ("skip", "permission denied")
            return
        except OSError as exc:
            yield [], ("skip", f"cannot open: {exc.strerror}")
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                yield [], ("skip", "was replaced by something that is not a regular file")
                return
            total = 0
            records: list[tuple[bytes, int, bytes | None]] = []
            pending = 0
            for start, end in self._regions(fd, st):
                if start > total:
                    records.append((HOLE_ID, start - total, None))
                    total = start
                for rec in self._chunks(fd, start, end):
                    records.append(rec)
                    total += rec[1]
                    if rec[2] is not None:
                        pending += len(rec[2])
                        if pending >= FLUSH_BYTES:
                            yield records, None
                            records, pending = [], 0
            end_size = os.fstat(fd).st_size
            if end_size > total and st.st_blocks * 512 < end_size:
                records.append((HOLE_ID, end_size - total, None))  # trailing hole
                total = end_size
            after = os.fstat(fd)
            if after.st_mtime_ns != scan_mtime or total != scan_size or after.st_size != total:
                yield records, ("warn", "changed while it was being read; stored as read")
            else:
                yield records, ("ok", None)
        except OSError as exc:
            yield [], ("skip", f"read error: {exc.strerror}")
        finally:
            os.close(fd)

    def _open(self, path: bytes) -> int:
        self.opens += 1
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        if _O_NOATIME:
            try:
                return os.open(path, flags | _O_NOATIME)
            except PermissionError as exc:
                if exc.errno != errno.EPERM:  # O_NOATIME needs ownership; retry without
                    raise
        return os.open(path, flags)

    def _regions(self, fd: int, st: os.stat_result):
        """Data regions; holes of sparse files are found with SEEK_DATA/SEEK_HOLE."""
        if st.st_size < SPARSE_MIN or st.st_blocks * 512 >= st.st_size:
            yield 0, None
            return
        pos = 0
        while True:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole from here on
                    return
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, end
            pos = end

    def _chunks(self, fd: int, start: int, end: int | None):
        """Content-defined chunks of [start, end) (to EOF when ``end`` is None)."""
        buf = self.buf
        mv = memoryview(buf)
        max_size = self.params.max_size
        pos, carry = start, 0
        index, seen, hasher = self.index, self.seen, self.hash
        while True:
            room = len(buf) - carry
            if end is not None:
                room = min(room, end - pos)
            n = os.preadv(fd, [mv[carry : carry + room]], pos) if room > 0 else 0
            pos += n
            fill = carry + n
            eof = n == 0 or (end is not None and pos >= end)
            if fill == 0:
                return
            consumed = 0
            for c in self.cdc.cut_buf(mv[:fill]):
                if not eof and c.offset + max_size > fill:
                    break  # not enough look-ahead for a content-defined cut
                data = mv[c.offset : c.offset + c.length]
                cid = hasher(data)
                if cid in seen or cid in index:
                    yield cid, c.length, None
                else:
                    seen.add(cid)
                    yield cid, c.length, encode_chunk(data, cid, self.sealer, self.cctx)
                consumed = c.offset + c.length
            if eof:
                return
            carry = fill - consumed
            buf[:carry] = buf[consumed:fill]
