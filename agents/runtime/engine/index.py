"""The chunk index: which pack holds a chunk, in a fixed, documented amount of memory.

A Python ``dict`` of 32-byte ids would cost ~200 bytes per chunk (2 GB for 10 million). Here the
records live in one ``bytearray`` of 48-byte rows (id, pack number, offset, stored length, plain
length) and an open-addressing table of ``uint32`` row numbers (load factor 0.3-0.6) finds them:
48 + 7 to 13 bytes, **at most 61 bytes per chunk** (10 million chunks: ~610 MB, and with the
default 2 MiB average chunk that is ~20 TB of unique data in large files). Lookups cost ~1 µs in Python.

Forked worker processes inherit the table copy-on-write; reading it does not touch its pages.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from agents.runtime.engine.crypto import OVERHEAD

REC = struct.Struct("<32sIIII")
RECSIZE = REC.size  # 48
MAX_LOAD = 0.6
DEAD_SIZE = 2**64 - 1
HOLE = bytes(32)  # format.HOLE_ID: a sparse-file hole, never stored
CACHE_MAGIC = b"HVC2"
FRAME = 4 << 20
FRAME_LEN = struct.Struct("<I")
LAST_FRAME = 1 << 31


ROWSIZE = 44  # format.PACK_ROW.size: a pack header's row


@contextlib.contextmanager
def _heads(table: bytes | bytearray, stride: int) -> Iterator[Iterable[int]]:
    """The low 32 bits of the hash of each ``stride``-byte row of ``table`` (its first 8
    bytes, little-endian: all a slot mask uses, the slot table being far below 2^32 slots),
    read in C without a slice per row."""
    if sys.byteorder != "little" or stride % 4:
        yield [int.from_bytes(table[o : o + 4], "little") for o in range(0, len(table), stride)]
        return
    with memoryview(table) as view, view.cast("I") as words, words[:: stride // 4] as heads:
        yield heads


def _frame_ad(no: int, last: bool) -> bytes:
    return b"frame\0" + struct.pack("<QB", no, last)


class ChunkIndex:
    def __init__(self) -> None:
        self._recs = bytearray()
        self._n = 0
        self._slots = array("I", bytes(4 * 1024))
        self._mask = 1023
        self.pack_ids: list[bytes] = []
        self.pack_sizes: list[int] = []
        self._pack_no: dict[bytes, int] = {}
        self._dead: set[int] = set()

    def __len__(self) -> int:
        return self._n

    def memory_bytes(self) -> int:
        return len(self._recs) + 4 * len(self._slots)

    # -- packs ---------------------------------------------------------------------------
    def add_pack(self, pack_id: bytes, size: int) -> int:
        no = self._pack_no.get(pack_id)
        if no is not None:
            self.pack_sizes[no] = size
            self._dead.discard(no)
            return no
        no = len(self.pack_ids)
        self.pack_ids.append(pack_id)
        self.pack_sizes.append(size)
        self._pack_no[pack_id] = no
        return no

    def has_pack(self, pack_id: bytes) -> bool:
        return pack_id in self._pack_no

    def pack_no(self, pack_id: bytes) -> int | None:
        return self._pack_no.get(pack_id)

    def mark_dead(self, pack_no: int) -> None:
        """The pack is gone from storage (garbage collected): its chunks count as absent."""
        self._dead.add(pack_no)

    def is_dead(self, pack_no: int | None) -> bool:
        return pack_no in self._dead

    # -- chunks --------------------------------------------------------------------------
    def _find(self, chunk_id: bytes) -> tuple[int, int]:
        """(slot, row+1) or (empty slot, 0)."""
        recs, slots, mask = self._recs, self._slots, self._mask
        h = int.from_bytes(chunk_id[:8], "little") & mask
        while True:
            s = slots[h]
            if s == 0:
                return h, 0
            o = (s - 1) * RECSIZE
            if recs[o : o + 32] == chunk_id:
                return h, s
            h = (h + 1) & mask

    def __contains__(self, chunk_id: bytes) -> bool:
        s = self._find(chunk_id)[1]
        if not s:
            return False
        if self._dead:
            return REC.unpack_from(self._recs, (s - 1) * RECSIZE)[1] not in self._dead
        return True

    def packs_of(self, content) -> list[int] | None:
        """Pack numbers of the chunks of ``content`` ((id, length) pairs; holes skipped), or
        None as soon as one is not stored: ``pack_of`` for a whole file in one call."""
        return self.packs_of_ids([chunk_id for chunk_id, _ in content])

    def packs_of_ids(self, ids: list[bytes]) -> list[int] | None:
        """``packs_of`` given the chunk ids alone."""
        recs, slots, mask, dead = self._recs, self._slots, self._mask, self._dead
        out = []
        for chunk_id in ids:
            if chunk_id == HOLE:
                continue
            h = int.from_bytes(chunk_id[:8], "little") & mask
            while True:
                s = slots[h]
                if s == 0:
                    return None
                o = (s - 1) * RECSIZE
                if recs[o : o + 32] == chunk_id:
                    no = int.from_bytes(recs[o + 32 : o + 36], "little")
                    if no in dead:
                        return None
                    out.append(no)
                    break
                h = (h + 1) & mask
        return out

    def pack_of(self, chunk_id: bytes) -> int | None:
        """The live pack number holding the chunk, or None (``get`` without the rest; the
        probe of ``packs_of_ids`` for one id, without its list: a no-change backup asks
        this once for each small file)."""
        if chunk_id == HOLE:
            return None
        recs, slots, mask = self._recs, self._slots, self._mask
        h = int.from_bytes(chunk_id[:8], "little") & mask
        while True:
            s = slots[h]
            if s == 0:
                return None
            o = (s - 1) * RECSIZE
            if recs[o : o + 32] == chunk_id:
                no = int.from_bytes(recs[o + 32 : o + 36], "little")
                return None if no in self._dead else no
            h = (h + 1) & mask

    def get(self, chunk_id: bytes) -> tuple[int, int, int, int] | None:
        """(pack number, offset, stored length, plain length) or None."""
        s = self._find(chunk_id)[1]
        if not s:
            return None
        loc = REC.unpack_from(self._recs, (s - 1) * RECSIZE)[1:]
        if loc[0] in self._dead:
            return None
        return loc

    def add(self, chunk_id: bytes, pack_no: int, offset: int, length: int, raw_len: int) -> bool:
        """Add a chunk; False (and no change) when it is already indexed in a live pack."""
        h, s = self._find(chunk_id)
        if s:
            o = (s - 1) * RECSIZE
            if REC.unpack_from(self._recs, o)[1] in self._dead:
                self._recs[o : o + RECSIZE] = REC.pack(chunk_id, pack_no, offset, length, raw_len)
                return True
            return False
        self._recs += REC.pack(chunk_id, pack_no, offset, length, raw_len)
        self._n += 1
        self._slots[h] = self._n
        if self._n > MAX_LOAD * len(self._slots):
            self._grow()
        return True

    def add_rows(self, pack_no: int, rows) -> int:
        """``add`` for each (id, offset, stored length, plain length) row of one pack, in one
        call (an index blob's packs, as ``format.decode_index`` reads them); returns the
        plain bytes newly indexed."""
        pack, find, recs = REC.pack, self._find, self._recs
        added = 0
        for cid, off, length, raw_len in rows:
            h, s = find(cid)
            if s:
                o = (s - 1) * RECSIZE
                if int.from_bytes(recs[o + 32 : o + 36], "little") not in self._dead:
                    continue
                recs[o : o + RECSIZE] = pack(cid, pack_no, off, length, raw_len)
            else:
                recs += pack(cid, pack_no, off, length, raw_len)
                self._n += 1
                self._slots[h] = self._n
                if self._n > MAX_LOAD * len(self._slots):
                    self._grow()
            added += raw_len
        return added

    def add_packed(self, pack_no: int, rows: bytes, raw: int) -> int:
        """``add`` for every row of one pack's header as it is stored (``format.PACK_ROW``:
        id, offset, stored length, plain length, back to back), in one call: a chunking
        process's pack of small files arrives so, thousands of rows. ``raw``: their plain
        bytes. Returns the plain bytes newly indexed."""
        count = len(rows) // ROWSIZE
        self.reserve(self._n + count)  # (no growth below)
        recs, slots, mask, dead = self._recs, self._slots, self._mask, self._dead
        n = self._n
        pno = pack_no.to_bytes(4, "little")
        found: list[int] = []  # offsets of the rows whose id is indexed already
        o = 0
        with _heads(rows, ROWSIZE) as heads:
            for h in heads:
                h &= mask
                s = slots[h]
                while s:
                    ro = (s - 1) * RECSIZE
                    if recs[ro : ro + 32] == rows[o : o + 32]:
                        break
                    h = (h + 1) & mask
                    s = slots[h]
                if s:
                    found.append(o)
                    ro = (s - 1) * RECSIZE
                    if int.from_bytes(recs[ro + 32 : ro + 36], "little") in dead:
                        recs[ro : ro + RECSIZE] = rows[o : o + 32] + pno + rows[o + 32 : o + 44]
                    else:  # in a live pack: this copy stays unindexed
                        raw -= int.from_bytes(rows[o + 40 : o + 44], "little")
                else:
                    n += 1  # its row number: the new rows are appended in this order
                    slots[h] = n
                o += ROWSIZE
        if not found:
            # every row is new: the records are the rows with the pack number put in
            out = bytearray(count * RECSIZE)
            for k in range(32):
                out[k::RECSIZE] = rows[k::ROWSIZE]
            for k in range(4):
                out[32 + k :: RECSIZE] = pno[k : k + 1] * count
            for k in range(12):
                out[36 + k :: RECSIZE] = rows[32 + k :: ROWSIZE]
            recs += out
        else:
            skip = set(found)
            for o in range(0, len(rows), ROWSIZE):
                if o not in skip:
                    recs += rows[o : o + 32] + pno + rows[o + 32 : o + 44]
        self._n = n
        return raw

    def reserve(self, total: int) -> None:
        """Room for ``total`` chunks in all without growing: one rehash to the size the
        table would reach doubling as they came, instead of one per doubling."""
        size = len(self._slots)
        while total > MAX_LOAD * size:
            size *= 2
        if size != len(self._slots):
            self._resize(size)

    def _grow(self) -> None:
        self._resize(len(self._slots) * 2)

    def _resize(self, size: int) -> None:
        slots = array("I", bytes(4 * size))
        mask = size - 1
        row = 0
        with _heads(self._recs, RECSIZE) as heads:
            for h in heads:
                h &= mask
                row += 1
                while slots[h]:
                    h = (h + 1) & mask
                slots[h] = row
        self._slots, self._mask = slots, mask

    def items(self) -> Iterator[tuple[bytes, int, int, int, int]]:
        for row in range(self._n):
            yield REC.unpack_from(self._recs, row * RECSIZE)

    def chunks_of_pack(self) -> dict[int, list[tuple[bytes, int, int, int]]]:
        out: dict[int, list[tuple[bytes, int, int, int]]] = {}
        for cid, pno, off, length, raw in self.items():
            out.setdefault(pno, []).append((cid, off, length, raw))
        return out

    # -- cache file ----------------------------------------------------------------------
    def dump(self) -> bytes:
        return b"".join(self.cache_frames())

    def cache_frames(self) -> Iterator[bytes | memoryview]:
        """The cache form in pieces of at most ``FRAME`` bytes, no copy of the tables: what
        ``save_frames`` seals one at a time (``dump`` joins them for the tests)."""
        head = struct.pack("<QQQ", self._n, len(self._slots), len(self.pack_ids))
        sizes = [DEAD_SIZE if no in self._dead else s for no, s in enumerate(self.pack_sizes)]
        packs = b"".join(
            p + struct.pack("<Q", s) for p, s in zip(self.pack_ids, sizes, strict=False)
        )
        yield head
        for table in (packs, memoryview(self._slots).cast("B"), memoryview(self._recs)):
            view = memoryview(table)
            for start in range(0, len(view), FRAME):
                yield view[start : start + FRAME]

    def cache_size(self) -> int:
        """What ``save_frames`` writes, in bytes."""
        frames = list(self.cache_frames())
        return len(CACHE_MAGIC) + sum(len(fr) + OVERHEAD + FRAME_LEN.size for fr in frames)

    def save_frames(self, f: BinaryIO, seal: Callable[[bytes | memoryview, bytes], bytes]) -> int:
        """Write the cache form to ``f`` as sealed frames (``seal(plaintext, ad)``), each
        bound to its place and the last marked, so a cut or reordered file fails to load.
        Memory: one frame, not a copy of the index. Returns the bytes written."""
        frames = list(self.cache_frames())
        written = f.write(CACHE_MAGIC)
        for no, frame in enumerate(frames):
            last = no == len(frames) - 1
            sealed = seal(frame, _frame_ad(no, last))
            written += f.write(FRAME_LEN.pack(len(sealed) | (LAST_FRAME if last else 0)))
            written += f.write(sealed)
        return written

    @classmethod
    def load_frames(cls, f: BinaryIO, unseal: Callable[[bytes, bytes], bytes]) -> ChunkIndex:
        """Read what ``save_frames`` wrote (``unseal(sealed, ad)`` raises on tampering);
        ValueError when it is not that, is cut short or runs on. The tables are filled in
        place: no copy of the file, nor of the index, is ever held whole."""
        if f.read(len(CACHE_MAGIC)) != CACHE_MAGIC:
            raise ValueError("not an index cache of this version")
        no = 0
        last = False

        def frame() -> bytes:
            nonlocal no, last
            if last:
                raise ValueError("index cache ends early")
            raw = f.read(FRAME_LEN.size)
            if len(raw) != FRAME_LEN.size:
                raise ValueError("truncated index cache")
            (length,) = FRAME_LEN.unpack(raw)
            last = bool(length & LAST_FRAME)  # (sealed into the frame's associated data)
            sealed = f.read(length & ~LAST_FRAME)
            if len(sealed) != length & ~LAST_FRAME:
                raise ValueError("truncated index cache")
            plain = unseal(sealed, _frame_ad(no, last))
            no += 1
            return plain

        def fill(into: bytearray | memoryview, size: int) -> None:
            pos = 0
            while pos < size:
                piece = frame()
                if not piece or pos + len(piece) > size:
                    raise ValueError("malformed index cache")
                into[pos : pos + len(piece)] = piece
                pos += len(piece)

        idx = cls()
        n, nslots, npacks = struct.unpack("<QQQ", frame())
        if nslots < 1024 or nslots & (nslots - 1) or n > MAX_LOAD * nslots + 1:
            raise ValueError("malformed index cache")
        packs = bytearray(24 * npacks)
        fill(packs, len(packs))
        for pos in range(0, len(packs), 24):
            idx.add_pack(bytes(packs[pos : pos + 16]), struct.unpack_from("<Q", packs, pos + 16)[0])
        idx._slots = array("I", bytes(4 * nslots))
        fill(memoryview(idx._slots).cast("B"), 4 * nslots)
        idx._recs = bytearray(n * RECSIZE)
        fill(idx._recs, n * RECSIZE)
        if not last or f.read(1):
            raise ValueError("index cache runs on past its tables")
        idx._n, idx._mask = n, nslots - 1
        idx._dead = {no for no, size in enumerate(idx.pack_sizes) if size == DEAD_SIZE}
        return idx

    @classmethod
    def load(cls, raw: bytes) -> ChunkIndex:
        idx = cls()
        n, nslots, npacks = struct.unpack_from("<QQQ", raw, 0)
        pos = 24
        for _ in range(npacks):
            idx.add_pack(raw[pos : pos + 16], struct.unpack_from("<Q", raw, pos + 16)[0])
            pos += 24
        idx._slots = array("I")
        idx._slots.frombytes(raw[pos : pos + 4 * nslots])
        pos += 4 * nslots
        idx._recs = bytearray(raw[pos : pos + n * RECSIZE])
        idx._n, idx._mask = n, nslots - 1
        idx._dead = {no for no, size in enumerate(idx.pack_sizes) if size == DEAD_SIZE}
        if len(idx._recs) != n * RECSIZE or len(idx._slots) != nslots:
            raise ValueError("truncated index cache")
        return idx
