"""``run_verify``: read back and authenticate stored data, and name what damage affects."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

from agents.runtime.blobstore.base import BlobNotFound, StorageError
from agents.runtime.engine.errors import IntegrityError
from agents.runtime.engine.format import HOLE_ID, decode_chunk, parse_pack_header
from agents.runtime.engine.layout import pack_blob
from agents.runtime.engine.progress import ProgressSink, Reporter, display_path
from agents.runtime.engine.repository import ChunkReader, Repository


@dataclass
class DamagedPack:
    pack_id: str
    reason: str
    bad_chunks: int
    files: list[dict] = field(default_factory=list)  # {"recovery_point", "path"}


@dataclass
class VerifyReport:
    ok: bool
    packs_checked: int
    packs_total: int
    chunks_checked: int
    bytes_checked: int
    recovery_points_checked: int
    damaged: list[DamagedPack] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)  # files whose chunks are not indexed
    unreadable_recovery_points: list[dict] = field(default_factory=list)
    duration_s: float = 0.0
    message: str = ""


def in_slice(pack_id: bytes, slices: int, slice_no: int) -> bool:
    """Whether pack ``pack_id`` (random bytes) belongs to slice ``slice_no`` of ``slices``:
    each pack is in exactly one slice, and a pack written later joins one too."""
    return int.from_bytes(pack_id[:8], "big") % slices == slice_no


def run_verify(
    repo: Repository,
    *,
    fraction: float = 1.0,
    sink: ProgressSink | None = None,
    cancel: threading.Event | None = None,
    seed: int | None = None,
    slices: int = 1,
    slice_no: int = 0,
) -> VerifyReport:
    """Authenticate every chunk of ``fraction`` of the packs (randomly chosen; 1.0 = all) and
    every manifest; damaged packs are reported with the files (per recovery point) they hold.

    With ``slices`` > 1 the packs read are slice ``slice_no`` of ``slices`` instead
    (``in_slice``): a fixed share of the packs, so that runs over slices 0 .. slices-1 read
    every pack, whatever the order packs were written in."""
    if slices < 1 or not 0 <= slice_no < slices:
        raise ValueError(f"slice {slice_no} of {slices} does not exist")
    started = time.monotonic()
    cancel = cancel or threading.Event()
    rep = Reporter(sink, "verify")
    rep.set_phase("verifying")
    index = repo.load_index()
    by_pack = index.chunks_of_pack()
    live = [no for no in by_pack if not index.is_dead(no)]
    if slices > 1:
        chosen = [no for no in live if in_slice(index.pack_ids[no], slices, slice_no)]
    else:
        rng = random.Random(seed)
        count = len(live) if fraction >= 1 else max(1, round(len(live) * fraction)) if live else 0
        chosen = sorted(rng.sample(live, count))
    rep.files_total = len(chosen)
    rep.bytes_total = sum(index.pack_sizes[no] for no in chosen)
    damaged: dict[int, DamagedPack] = {}
    bad_chunks: dict[bytes, int] = {}
    chunks = 0
    for no in chosen:
        if cancel.is_set():
            break
        pack_id = index.pack_ids[no]
        rows = by_pack[no]
        try:
            data = repo.store.get(pack_blob(pack_id))
        except BlobNotFound:
            damaged[no] = DamagedPack(pack_id.hex(), "pack is missing from storage", len(rows))
            bad_chunks.update((cid, no) for cid, *_ in rows)
            continue
        except StorageError as exc:
            damaged[no] = DamagedPack(pack_id.hex(), f"cannot be read: {exc}", 0)
            continue
        reasons = []
        try:
            header = {r[0]: r[1:] for r in parse_pack_header(data, repo.sealer, pack_id)}
        except IntegrityError as exc:
            header = None
            reasons.append(f"pack header: {exc}")
        nbad = 0
        for cid, off, length, raw in rows:
            chunks += 1
            try:
                plain = decode_chunk(memoryview(data)[off : off + length], cid, repo.sealer, raw)
                if len(data) < off + length or repo.chunk_id(plain) != cid:
                    raise IntegrityError("content does not match its id")
                if header is not None and header.get(cid) != (off, length, raw):
                    reasons.append("pack header disagrees with the index")
            except IntegrityError as exc:
                nbad += 1
                bad_chunks[cid] = no
                if len(reasons) < 3:
                    reasons.append(f"chunk at offset {off}: {exc}")
        if reasons:
            damaged[no] = DamagedPack(pack_id.hex(), "; ".join(dict.fromkeys(reasons)), nbad)
        rep.files_done += 1
        rep.bytes_done += len(data)
        rep.emit()
    report = VerifyReport(
        ok=True,
        packs_checked=rep.files_done,
        packs_total=len(live),
        chunks_checked=chunks,
        bytes_checked=rep.bytes_done,
        recovery_points_checked=0,
    )
    # Every manifest: it must open, and every chunk it needs must be indexed; damaged
    # chunks are traced to the files that need them.
    reader = ChunkReader(repo)
    for rp in repo.list_recovery_points():
        if cancel.is_set():
            break
        try:
            for e in repo.iter_entries(rp, reader):
                for cid, _n in e.content:
                    if cid == HOLE_ID:
                        continue
                    no = bad_chunks.get(cid)
                    if no is not None:
                        damaged[no].files.append(
                            {"recovery_point": rp.id, "path": display_path(e.path)}
                        )
                        break
                    if index.get(cid) is None:
                        report.missing.append(
                            {"recovery_point": rp.id, "path": display_path(e.path)}
                        )
                        break
        except (IntegrityError, StorageError) as exc:
            report.unreadable_recovery_points.append({"recovery_point": rp.id, "reason": str(exc)})
        report.recovery_points_checked += 1
    report.damaged = list(damaged.values())
    report.ok = not (report.damaged or report.missing or report.unreadable_recovery_points)
    report.duration_s = round(time.monotonic() - started, 3)
    if report.ok:
        report.message = (
            f"verified {report.packs_checked} of {report.packs_total} packs and "
            f"{report.recovery_points_checked} recovery points: no damage"
        )
    else:
        report.message = (
            f"damage found: {len(report.damaged)} damaged packs, "
            f"{sum(len(d.files) for d in report.damaged)} affected files, "
            f"{len(report.missing)} files with missing data, "
            f"{len(report.unreadable_recovery_points)} unreadable recovery points"
        )
    rep.finish("completed" if report.ok else "damaged", message=report.message)
    return report
