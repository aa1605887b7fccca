"""``run_compact``: rewrite the live chunks of wasteful packs into full packs.

Pack collection (the portal's) deletes only packs that no kept recovery point references at
all; a pack whose chunks are partly dead, and the small packs every incremental backup leaves,
stay. Compaction is the agent's half of removing them (docs/storage-format.md, "Garbage
collection"): the agent, which can decrypt, finds which chunks the stored recovery points
still need, copies those chunk objects of each candidate pack **byte for byte** (they are
sealed with their chunk id as associated data, not their pack's, so a verbatim copy is valid
in any pack) into new packs, uploads them, writes an index delta for them, and returns a
report saying where every object of every candidate pack went. It deletes nothing: the
portal checks the report against storage and its own references and only then deletes the
old packs (``jobs.services.compaction``).

Every step only adds blobs, so a run killed at any moment leaves a valid repository: before
the index delta, the new packs are unindexed (the next backup's ``sync_packs`` indexes
them, pack collection removes them); after it, every chunk has two stored copies until the
portal deletes the old one. The next run plans again from what is stored and finishes the work.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agents.runtime.blobstore.base import BlobNotFound
from agents.runtime.engine.errors import Cancelled, IntegrityError
from agents.runtime.engine.format import HOLE_ID, PackBuilder, chunk_ad, decode_index
from agents.runtime.engine.layout import DATA_PREFIX, INDEX_PREFIX, pack_blob, pack_id_of
from agents.runtime.engine.progress import ProgressSink, Reporter
from agents.runtime.engine.repository import Repository
from agents.runtime.protocol import COMPACT_MAX_OBJECTS, CompactedPack, CompactReport

DEFAULT_PACK_SIZE = 16 << 20
DEFAULT_THRESHOLD = 0.2  # a pack whose dead share of bytes is above this is rewritten
# Packs under this share of the full size are "small": two or more are merged.
SMALL_SHARE = 0.5

# The kill points a test may stop a run at (``crash``): before the first new pack is
# uploaded, after the last upload and before the index delta, after the index delta.
CRASH_POINTS = ("before_upload", "after_upload", "after_index")


@dataclass
class CompactResult:
    status: str  # "completed", "nothing" (no pack worth rewriting), "cancelled"
    packs_total: int = 0
    bytes_total: int = 0
    packs_rewritten: int = 0
    bytes_rewritten: int = 0  # stored size of the packs rewritten (what the portal may delete)
    live_bytes: int = 0  # chunk bytes copied
    new_packs: list[str] = field(default_factory=list)
    bytes_written: int = 0  # stored size of the new packs
    packs_left: int = 0  # candidates left for the next run (``max_objects``)
    damaged: list[str] = field(default_factory=list)  # packs left alone: a chunk failed
    duration_s: float = 0.0
    message: str = ""
    # What the portal checks before it deletes the old packs (docs/jobs.md, "Compact").
    report: CompactReport = field(default_factory=CompactReport)


def _stored_packs(repo: Repository) -> dict[bytes, int]:
    present = {}
    for info in repo.store.list(DATA_PREFIX):
        try:
            present[bytes.fromhex(pack_id_of(info.name))] = info.size
        except ValueError:
            continue
    return present


def _pack_rows(repo: Repository, present: dict[bytes, int]) -> dict[bytes, list]:
    """Every stored pack's rows, from every index delta (the index keeps one copy of a
    chunk; compaction needs every object of a pack) or, for a pack no delta names, from its
    header."""
    rows: dict[bytes, list] = {}
    for info in repo.store.list(INDEX_PREFIX):
        for pack_id, _size, pack_rows in decode_index(repo.get_sealed(info.name)):
            if pack_id in present and pack_id not in rows:
                rows[pack_id] = pack_rows
    for pack_id, size in present.items():
        if pack_id not in rows:
            try:
                rows[pack_id] = repo.read_pack_header(pack_id, size)
            except (IntegrityError, BlobNotFound, ValueError):
                continue  # a foreign or truncated blob: not ours to rewrite
    return rows


def live_chunks(repo: Repository, cancel: threading.Event | None = None) -> set[bytes]:
    """Every chunk a stored recovery point needs: its metadata chunks and its files'."""
    live: set[bytes] = set()
    repo.load_index()
    for rp in repo.list_recovery_points():
        if cancel is not None and cancel.is_set():
            raise Cancelled
        live.update(bytes.fromhex(h) for h in rp.meta)
        for entry in repo.iter_entries(rp):
            live.update(cid for cid, _n in entry.content)
    live.discard(HOLE_ID)
    return live


def _packs(count: int, word: str = "pack") -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def header_dead(rows: list) -> list[tuple[int, ...]]:
    return [(off, length) for _cid, off, length, _raw in rows]


def run_compact(
    repo: Repository,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    pack_size: int = DEFAULT_PACK_SIZE,
    sink: ProgressSink | None = None,
    cancel: threading.Event | None = None,
    cache_dir: Path | None = None,
    max_objects: int = COMPACT_MAX_OBJECTS,
    crash: Callable[[str], None] | None = None,
) -> CompactResult:
    """Rewrite the live chunks of packs whose dead share is above ``threshold`` and of small
    packs into new packs of about ``pack_size``; returns what was done and the report the
    portal needs before it may delete the old packs. ``crash(point)`` is called at each of
    ``CRASH_POINTS`` (tests stop the run there)."""
    started = time.monotonic()
    cancel = cancel or threading.Event()
    crash = crash or (lambda point: None)
    rep = Reporter(sink, "compact")
    rep.set_phase("scanning")
    repo.load_index(cache_dir)
    present = _stored_packs(repo)
    rows_of = _pack_rows(repo, present)
    live = live_chunks(repo, cancel)
    result = CompactResult(
        status="nothing", packs_total=len(present), bytes_total=sum(present.values())
    )

    small = int(pack_size * SMALL_SHARE)
    wasteful, smalls = [], []
    for pack_id, rows in rows_of.items():
        size = present[pack_id]
        data = sum(length for _cid, _off, length, _raw in rows) or 1
        dead = sum(length for cid, _off, length, _raw in rows if cid not in live)
        if dead / data > threshold:
            wasteful.append(pack_id)
        elif size < small:
            smalls.append(pack_id)
    candidates = sorted(wasteful) + (sorted(smalls) if len(smalls) > 1 else [])
    chosen: list[bytes] = []
    objects = 0
    for pack_id in candidates:
        if chosen and objects + len(rows_of[pack_id]) > max_objects:
            result.packs_left += 1
            continue
        chosen.append(pack_id)
        objects += len(rows_of[pack_id])
    if not chosen:
        result.duration_s = round(time.monotonic() - started, 3)
        result.message = f"No pack needs compacting ({_packs(len(present))} checked)."
        rep.finish("completed", message=result.message)
        return result

    rep.set_phase("compacting")
    rep.files_total = len(chosen)
    rep.bytes_total = sum(present[p] for p in chosen)
    new_packs: list[tuple[bytes, int, list]] = []  # uploaded: id, size, rows
    builder: PackBuilder | None = None
    builder_id = b""
    reported: list[CompactedPack] = []
    crashed_before = False

    def seal() -> None:
        nonlocal builder, crashed_before
        if builder is None:
            return
        if not crashed_before:
            crash("before_upload")
            crashed_before = True
        data = builder.finish(repo.sealer, builder_id)
        repo.store.put(pack_blob(builder_id), data)
        new_packs.append((builder_id, len(data), builder.rows))
        result.bytes_written += len(data)
        rep.stored_bytes = result.bytes_written
        builder = None

    for pack_id in chosen:
        if cancel.is_set():
            break
        rep.current = pack_id.hex().encode()
        if not any(row[0] in live for row in rows_of[pack_id]):
            # nothing to copy: the pack need not be read
            header = sorted(rows_of[pack_id], key=lambda row: row[1])
            reported.append(CompactedPack(pack_id.hex(), present[pack_id], header_dead(header)))
            result.packs_rewritten += 1
            result.bytes_rewritten += present[pack_id]
            rep.files_done += 1
            rep.bytes_done += present[pack_id]
            continue
        try:
            blob = repo.store.get(pack_blob(pack_id))
            header = sorted(repo.parse_pack(blob, pack_id), key=lambda row: row[1])
            keep = [row for row in header if row[0] in live]
            for cid, off, length, _raw in keep:
                # authenticate before copying: a damaged object is never carried forward
                repo.sealer.open(memoryview(blob)[off : off + length], chunk_ad(cid))
        except (IntegrityError, BlobNotFound) as exc:
            result.damaged.append(f"{pack_id.hex()} ({exc})")
            continue
        objects_out: list[tuple[int, ...]] = []
        for cid, off, length, raw in header:
            if cid not in live:
                objects_out.append((off, length))
                continue
            if builder is None or len(builder) + length > pack_size:
                seal()
                builder, builder_id = PackBuilder(), os.urandom(16)
            new_off, _ = builder.add(cid, bytes(blob[off : off + length]), raw)
            # the pack being filled is the next one uploaded
            objects_out.append((off, length, len(new_packs), new_off))
            result.live_bytes += length
        reported.append(CompactedPack(pack_id.hex(), len(blob), objects_out))
        result.packs_rewritten += 1
        result.bytes_rewritten += len(blob)
        rep.files_done += 1
        rep.bytes_done += len(blob)
        rep.emit()
    if cancel.is_set():
        result.status = "cancelled"
        result.message = "Cancelled on request; no pack was deleted."
        rep.finish("cancelled", message=result.message)
        return result
    seal()
    crash("after_upload")
    if new_packs:
        repo.write_index(new_packs)
        # This process's index: the new packs are known (the old copies stay first until
        # the portal deletes them; the index keeps one copy of a chunk).
        for pack_id, size, rows in new_packs:
            no = repo.index.add_pack(pack_id, size)
            for cid, off, length, raw in rows:
                repo.index.add(cid, no, off, length, raw)
    crash("after_index")
    result.new_packs = [p.hex() for p, _s, _r in new_packs]
    result.report = CompactReport(
        packs=reported, new_packs=[(p.hex(), size) for p, size, _r in new_packs]
    )
    result.status = "completed"
    result.duration_s = round(time.monotonic() - started, 3)
    result.message = (
        f"Rewrote {result.packs_rewritten} of {_packs(result.packs_total)} "
        f"({result.bytes_rewritten:,} bytes) into {_packs(len(new_packs), 'new pack')} "
        f"({result.bytes_written:,} bytes)."
    )
    if result.packs_left:
        result.message += f" {_packs(result.packs_left)} more wait for the next run."
    if result.damaged:
        result.message += (
            f" {_packs(len(result.damaged), 'damaged pack')} left as they are: "
            + "; ".join(result.damaged[:5])
            + ". Run a verify job to see the files they hold."
        )
    rep.finish("completed", message=result.message)
    return result
