"""Byte layouts of what the engine stores (documented in docs/storage-format.md).

* chunk object: ``seal(flag || payload, ad=b"chunk\\0" || id)``; flag 0 = stored, 1 = zstd
* pack: chunk objects back to back, then ``seal(header, ad=b"pack\\0" || pack id)`` and its
  length as ``uint32`` LE; header rows are ``<32s I I I`` (id, offset, length, plain length)
* index blob: ``seal(zstd(zstd(b"HVI1" || per pack: id(16) size(u64) count(u32) rows)))``, the
  outer frame that of every sealed small blob (``Repository.put_sealed``)
* manifest entries: a binary stream (``encode_entry``) cut into content-defined metadata chunks
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import zstandard

from agents.runtime.engine.crypto import OVERHEAD, Sealer
from agents.runtime.engine.errors import IntegrityError, UnsupportedFormat

HOLE_ID = bytes(32)  # a run of zeros not stored (sparse file hole)

FILE, DIR, SYMLINK, HARDLINK = 1, 2, 3, 4
KIND_NAMES = {FILE: "file", DIR: "dir", SYMLINK: "symlink", HARDLINK: "hardlink"}

PACK_ROW = struct.Struct("<32sIII")
TRAILER = struct.Struct("<I")


def chunk_ad(chunk_id: bytes) -> bytes:
    return b"chunk\0" + chunk_id


def encode_chunk(
    data: bytes | memoryview,
    chunk_id: bytes,
    sealer: Sealer,
    cctx: zstandard.ZstdCompressor | None,
) -> bytes:
    """Compress (when it pays: ≥3% smaller) then seal one chunk."""
    if cctx is not None and len(data) >= 128:
        comp = cctx.compress(data)
        if len(comp) < len(data) * 0.97:
            return sealer.seal(b"\x01" + comp, chunk_ad(chunk_id))
    return sealer.seal(b"\x00" + bytes(data), chunk_ad(chunk_id))


def chunk_payload(
    data: bytes | memoryview, cctx: zstandard.ZstdCompressor | None, scratch: bytearray
) -> memoryview:
    """What ``encode_chunk`` seals (flag, then the compressed or plain bytes), built in
    ``scratch`` (at least ``len(data) + 1`` bytes, reused: no fresh buffer per chunk)."""
    if cctx is not None and len(data) >= 128:
        comp = cctx.compress(data)
        if len(comp) < len(data) * 0.97:
            scratch[0] = 1
            scratch[1 : 1 + len(comp)] = comp
            return memoryview(scratch)[: 1 + len(comp)]
    scratch[0] = 0
    scratch[1 : 1 + len(data)] = data
    return memoryview(scratch)[: 1 + len(data)]


def sealed_size(payload_len: int) -> int:
    return payload_len + OVERHEAD


_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    """One decompressor per thread: zstandard's objects are not thread-safe (sharing one
    between restore threads corrupts output or crashes)."""
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def decode_chunk(blob: bytes | memoryview, chunk_id: bytes, sealer: Sealer, raw_len: int) -> bytes:
    payload = sealer.open(blob, chunk_ad(chunk_id))
    flag = payload[0]
    if flag == 0:
        data = payload[1:]
    elif flag == 1:
        try:
            data = _dctx().decompress(memoryview(payload)[1:], max_output_size=max(raw_len, 1))
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"chunk does not decompress: {exc}") from None
    else:
        raise UnsupportedFormat(f"unknown chunk encoding {flag}; upgrade Haven")
    if len(data) != raw_len:
        raise IntegrityError("chunk has the wrong length")
    return data


class PackBuilder:
    """Collects sealed chunks into one pack blob."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.rows: list[tuple[bytes, int, int, int]] = []
        self.ids: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.buf)

    def add(self, chunk_id: bytes, blob: bytes, raw_len: int) -> tuple[int, int]:
        off = len(self.buf)
        self.buf += blob
        self.rows.append((chunk_id, off, len(blob), raw_len))
        self.ids.add(chunk_id)
        return off, len(blob)

    def finish(self, sealer: Sealer, pack_id: bytes) -> memoryview:
        self.buf += pack_tail(self.rows, sealer, pack_id)
        return memoryview(self.buf)  # no copy: 16 MiB less per pack in flight


def pack_tail(
    rows: list[tuple[bytes, int, int, int]] | bytes, sealer: Sealer, pack_id: bytes
) -> bytes:
    """What follows a pack's chunks: the sealed header, then its length. ``rows``: tuples,
    or already packed back to back (``PACK_ROW``)."""
    header = rows if isinstance(rows, bytes) else b"".join(PACK_ROW.pack(*row) for row in rows)
    sealed = sealer.seal(header, b"pack\0" + pack_id)
    return sealed + TRAILER.pack(len(sealed))


def pack_tail_size(rows: int) -> int:
    return rows * PACK_ROW.size + OVERHEAD + TRAILER.size


def parse_pack_header(
    tail: bytes, sealer: Sealer, pack_id: bytes
) -> list[tuple[bytes, int, int, int]]:
    """Rows from the end of a pack (``tail`` must hold header and trailer)."""
    if len(tail) < TRAILER.size:
        raise IntegrityError("pack is truncated")
    (hlen,) = TRAILER.unpack_from(tail, len(tail) - TRAILER.size)
    if hlen + TRAILER.size > len(tail):
        raise IntegrityError("pack header length is out of range")
    sealed = tail[len(tail) - TRAILER.size - hlen : len(tail) - TRAILER.size]
    header = sealer.open(sealed, b"pack\0" + pack_id)
    if len(header) % PACK_ROW.size:
        raise IntegrityError("pack header is malformed")
    return [PACK_ROW.unpack_from(header, o) for o in range(0, len(header), PACK_ROW.size)]


INDEX_MAGIC = b"HVI1"
# An index delta's rows are mostly random chunk ids: level 3 shrinks them hardly further
# (0.944 against 0.950 of their size) at a third to a fifth of level 1's speed.
INDEX_LEVEL = 1


def encode_index(
    packs: Sequence[tuple[bytes, int, list[tuple[bytes, int, int, int]] | bytes]],
) -> bytes:
    """An index delta, compressed (``Repository.write_index`` seals it): ``rows`` of a
    pack are tuples, or already packed back to back (``PACK_ROW``)."""
    parts = [INDEX_MAGIC]
    for pack_id, size, rows in packs:
        if isinstance(rows, bytes):
            parts += (pack_id + struct.pack("<QI", size, len(rows) // PACK_ROW.size), rows)
            continue
        parts.append(pack_id + struct.pack("<QI", size, len(rows)))
        parts.extend(PACK_ROW.pack(*row) for row in rows)
    return zstandard.ZstdCompressor(level=INDEX_LEVEL).compress(b"".join(parts))


def decode_index(raw: bytes) -> Iterator[tuple[bytes, int, list[tuple[bytes, int, int, int]]]]:
    data = _dctx().decompress(raw, max_output_size=1 << 31)
    if data[:4] != INDEX_MAGIC:
        raise UnsupportedFormat("unknown index format; upgrade Haven")
    pos = 4
    while pos < len(data):
        pack_id = data[pos : pos + 16]
        size, count = struct.unpack_from("<QI", data, pos + 16)
        pos += 28
        end = pos + count * PACK_ROW.size
        if end > len(data):
            raise IntegrityError("index blob is truncated")
        rows = list(PACK_ROW.iter_unpack(memoryview(data)[pos:end]))
        pos = end
        yield pack_id, size, rows


# -- manifest entries -----------------------------------------------------------------------

ENTRY = struct.Struct("<BIIIIqqQQHHIII")
REF = struct.Struct("<32sQ")


@dataclass(slots=True)
class Entry:
    """One item of a recovery point. ``path`` is absolute, bytes, ``/``-separated."""

    path: bytes
    kind: int
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    size: int = 0
    nlink: int = 1
    user: bytes = b""
    group: bytes = b""
    target: bytes = b""  # symlink target, or the first path of a hard-link set
    content: list[tuple[bytes, int]] = field(default_factory=list)
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)  # (name, value), ACLs too
    # the bytes it was decoded from: an unchanged item is written back as it was read
    encoded: bytes = field(default=b"", compare=False, repr=False)

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, "unknown")

    @property
    def name(self) -> bytes:
        return self.path.rstrip(b"/").rsplit(b"/", 1)[-1] or b"/"

    @property
    def parent(self) -> bytes:
        """The folder holding it; a reserved (relative) root such as ``system-state`` sits
        at the top, beside ``/``'s folders."""
        head, sep, _ = self.path.rstrip(b"/").rpartition(b"/")
        return head or b"/" if sep else b"/"


XATTRS = 0x80  # in the kind byte: an extended-attribute block follows the chunk refs
XATTR = struct.Struct("<HI")


def encode_entry(e: Entry) -> bytes:
    return encode_fields(
        e.kind, e.mode, e.uid, e.gid, e.nlink, e.mtime_ns, e.ctime_ns, e.ino, e.size, e.user,
        e.group, e.path, e.target, e.content, e.xattrs,
    )  # fmt: skip


def encode_fields(
    kind: int, mode: int, uid: int, gid: int, nlink: int, mtime_ns: int, ctime_ns: int,
    ino: int, size: int, user: bytes, group: bytes, path: bytes, target: bytes,
    content: list[tuple[bytes, int]], xattrs: list[tuple[bytes, bytes]],
) -> bytes:  # fmt: skip
    """One entry's bytes from its fields, without an ``Entry`` (a chunking process encodes
    each file it reads this way, and the backup's main process only joins the bytes)."""
    head = ENTRY.pack(
        kind | (XATTRS if xattrs else 0), mode, uid, gid, nlink, mtime_ns, ctime_ns, ino, size,
        len(user), len(group), len(path), len(target), len(content),
    )  # fmt: skip
    if len(content) == 1 and not xattrs:  # a small file: one chunk
        cid, n = content[0]
        return b"".join((head, path, target, user, group, REF.pack(cid, n)))
    parts = [head, path, target, user, group]
    pack_ref = REF.pack
    for cid, n in content:
        parts.append(pack_ref(cid, n))
    if xattrs:
        parts.append(struct.pack("<H", len(xattrs)))
        for name, value in xattrs:
            parts += (XATTR.pack(len(name), len(value)), name, value)
    return b"".join(parts)


def _xattrs_end(buf, p: int, n: int) -> tuple[list[tuple[bytes, bytes]], int] | None:
    """The extended-attribute block at ``p``: (pairs, end), or None when ``buf`` ends first."""
    if p + 2 > n:
        return None
    (count,) = struct.unpack_from("<H", buf, p)
    p += 2
    pairs = []
    for _ in range(count):
        if p + XATTR.size > n:
            return None
        ln, lv = XATTR.unpack_from(buf, p)
        p += XATTR.size
        if p + ln + lv > n:
            return None
        pairs.append((bytes(buf[p : p + ln]), bytes(buf[p + ln : p + ln + lv])))
        p += ln + lv
    return pairs, p


def decode_entries(buf: bytes | bytearray, pos: int = 0) -> tuple[list[Entry], int]:
    """Complete entries in ``buf`` from ``pos``; returns them and where the rest starts."""
    out: list[Entry] = []
    n = len(buf)
    unpack, hsize, rsize = ENTRY.unpack_from, ENTRY.size, REF.size
    while pos + hsize <= n:
        kind, mode, uid, gid, nlink, mt, ct, ino, size, lu, lg, lp, lt, nc = unpack(buf, pos)
        end = pos + hsize + lp + lt + lu + lg + nc * rsize
        if end > n:
            break
        xattrs: list[tuple[bytes, bytes]] = []
        if kind & XATTRS:
            found = _xattrs_end(buf, end, n)
            if found is None:
                break
            xattrs, end = found
            kind &= ~XATTRS
        p = pos + hsize
        path = bytes(buf[p : p + lp])
        p += lp
        target = bytes(buf[p : p + lt])
        p += lt
        user = bytes(buf[p : p + lu])
        p += lu
        group = bytes(buf[p : p + lg])
        p += lg
        content = [REF.unpack_from(buf, p + i * rsize) for i in range(nc)]
        out.append(
            Entry(
                path, kind, mode, uid, gid, mt, ct, ino, size, nlink, user, group, target,
                content, xattrs, bytes(buf[pos:end]),
            )
        )  # fmt: skip
        pos = end
    return out, pos


# An entry located in a decoded manifest buffer without building it:
# (path, ENTRY's fields (kind with its XATTRS flag), start, end, the buffer).
EntryRef = tuple[bytes, tuple, int, int, bytes]


def scan_entries(buf: bytes, pos: int = 0) -> tuple[list[EntryRef], int]:
    """``decode_entries`` without the ``Entry`` objects: each complete entry's path, fixed
    fields and byte range in ``buf`` (what a backup's merge-join with the previous recovery
    point compares; ``entry_at`` builds the whole entry when one is needed)."""
    out: list[EntryRef] = []
    n = len(buf)
    unpack, hsize, rsize = ENTRY.unpack_from, ENTRY.size, REF.size
    while pos + hsize <= n:
        head = unpack(buf, pos)
        lp = head[11]
        end = pos + hsize + lp + head[12] + head[9] + head[10] + head[13] * rsize
        if end > n:
            break
        if head[0] & XATTRS:
            found = _xattrs_end(buf, end, n)
            if found is None:
                break
            end = found[1]
        out.append((buf[pos + hsize : pos + hsize + lp], head, pos, end, buf))
        pos = end
    return out, pos


def entry_at(ref: EntryRef) -> Entry:
    """The whole ``Entry`` that ``scan_entries`` located."""
    _path, _head, start, end, buf = ref
    return decode_entries(buf[start:end])[0][0]


def entry_refs_offset(ref: EntryRef) -> int:
    """Where the chunk references of a located entry start in its buffer."""
    _kind, *_, lu, lg, lp, lt, _nc = ref[1]
    return ref[2] + ENTRY.size + lp + lt + lu + lg
