"""``run_drill``: prove that a recovery point restores (docs/drills.md).

A drill picks a sample of the point's files (``choose_sample``: the largest ones and a
random set, up to a share of the files and a cap in bytes; or every file), restores them
with the restore's own file writer into a fresh folder inside a scratch folder, reads every
restored byte back and compares it with the manifest (each chunk's keyed hash, the size,
the modification time and the permission bits), then deletes what it restored.

Nothing is written outside the drill's folder: manifest paths are untrusted (``..``, empty
or relative components are refused by ``target.safe_components``), folders are opened
``O_NOFOLLOW`` (``target.TargetTree``), files are created ``O_EXCL | O_NOFOLLOW`` and read
back ``O_NOFOLLOW``. A drill refuses to start when the scratch disk lacks the space
(``ScratchTooSmall``).
"""

from __future__ import annotations

import heapq
import math
import os
import random
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agents.runtime.engine.errors import Cancelled, EngineError, IntegrityError, UnsafePath
from agents.runtime.engine.file_writer import FileWriter
from agents.runtime.engine.format import FILE, HOLE_ID, Entry
from agents.runtime.engine.progress import ProgressSink, Reporter, display_path
from agents.runtime.engine.repository import ChunkReader, RecoveryPoint, Repository
from agents.runtime.engine.target import safe_components
from agents.runtime.protocol import CONFLICT_SKIP
from agents.runtime.sizes import size_text

# Free space a drill leaves on the scratch disk beyond the sample itself (folders, metadata,
# and whatever else the machine writes meanwhile).
HEADROOM_BYTES = 64 << 20
READ_BLOCK = 1 << 20
FOLDER_PREFIX = "haven-drill-"


class ScratchTooSmall(EngineError):
    """The scratch disk has less free space than the sample needs: nothing was restored."""

    def __init__(self, scratch, free: int, needed: int) -> None:
        super().__init__(
            f"the restore drill did not start: the scratch folder {scratch} has "
            f"{size_text(free)} free, and this drill needs {size_text(needed)} (the sample and "
            f"{size_text(HEADROOM_BYTES)} of headroom). Free space there, lower the drill's cap "
            "in the backup policy, or choose another scratch folder"
        )
        self.free, self.needed = free, needed


@dataclass
class Sample:
    """The files a drill restores: ``entries`` (largest first, then the random ones)."""

    entries: list[Entry]
    bytes: int
    point_files: int
    point_bytes: int
    over_cap: int = 0  # files chosen but left out because the cap was reached


@dataclass
class DrillReport:
    """The evidence (``ok``: every sampled file restored and matched)."""

    recovery_point: str
    files: int = 0
    bytes: int = 0
    restore_s: float = 0.0
    verify_s: float = 0.0
    point_files: int = 0
    point_bytes: int = 0
    over_cap: int = 0
    mismatches: list[dict] = field(default_factory=list)  # {"path", "reason"}
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.cancelled

    @property
    def rate_bps(self) -> float:
        return self.bytes / self.restore_s if self.restore_s > 0 else 0.0


def choose_sample(
    entries: Iterable[Entry],
    *,
    whole: bool = False,
    fraction: float = 0.01,
    largest: int = 20,
    cap_bytes: int | None = None,
    expected_files: int | None = None,
    rng: random.Random | None = None,
) -> Sample:
    """The files to restore. ``whole``: every regular file. Otherwise ``ceil(fraction ×
    files)`` files, at least the ``largest`` largest and as many random others again: the
    largest first, then a uniform random set (reservoir sampling in one pass, sized from
    ``expected_files``, the point's count, when known); then ``cap_bytes`` keeps files in
    that order while they fit (a file that does not fit is left out, ``over_cap``)."""
    rng = rng or random.Random()
    files = point_bytes = 0
    if whole:
        chosen = []
        for e in entries:
            if e.kind == FILE:
                files += 1
                point_bytes += e.size
                chosen.append(e)
        return Sample(chosen, point_bytes, files, point_bytes)
    want = max(math.ceil(fraction * (expected_files or 0)), 2 * largest)
    top: list[tuple[int, int, Entry]] = []  # a min-heap of the largest
    reservoir: list[Entry] = []
    seen_random = 0
    for e in entries:
        if e.kind != FILE:
            continue
        files += 1
        point_bytes += e.size
        item = (e.size, files, e)
        if len(top) < largest:
            heapq.heappush(top, item)
            continue
        if largest and item[:2] > top[0][:2]:
            item = heapq.heapreplace(top, item)
        # the file that is not (or no longer) among the largest joins the random draw
        seen_random += 1
        size = max(want - largest, 0)
        if len(reservoir) < size:
            reservoir.append(item[2])
        else:
            j = rng.randrange(seen_random)
            if j < size:
                reservoir[j] = item[2]
    if expected_files is None:  # the count was not known: trim to the share of what was seen
        keep = max(math.ceil(fraction * files) - largest, min(largest, len(reservoir)))
        reservoir = rng.sample(reservoir, min(keep, len(reservoir)))
    ordered = [e for _, _, e in sorted(top, key=lambda t: t[:2], reverse=True)] + reservoir
    kept, total, over = [], 0, 0
    for e in ordered:
        if cap_bytes is not None and total + e.size > cap_bytes:
            over += 1
            continue
        kept.append(e)
        total += e.size
    return Sample(kept, total, files, point_bytes, over_cap=over)


def check_space(scratch: Path, needed: int) -> None:
    """``ScratchTooSmall`` unless the scratch disk has ``needed`` bytes and the headroom."""
    free = shutil.disk_usage(scratch).free
    if free < needed + HEADROOM_BYTES:
        raise ScratchTooSmall(scratch, free, needed + HEADROOM_BYTES)


def compare_file(repo: Repository, e: Entry, writer: FileWriter) -> str:
    """Why the restored copy of ``e`` differs from the manifest ("" when it matches): read
    back without following a link, every chunk hashed with the repository's key."""
    try:
        comps = safe_components(e.path)
        dfd = writer.tree.dir_fd(comps[:-1])
        fd = os.open(comps[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except (UnsafePath, OSError) as exc:
        return f"the restored copy cannot be read back: {exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "the restored item is not a regular file"
        if st.st_size != e.size:
            return f"the restored file has {st.st_size} bytes; the backup recorded {e.size}"
        pos = 0
        for number, (cid, n) in enumerate(e.content, start=1):
            data = _read_exactly(fd, n)
            if len(data) != n:
                return f"the restored file ends early, at byte {pos + len(data)}"
            if (cid == HOLE_ID and data.count(0) != n) or (
                cid != HOLE_ID and repo.chunk_id(data) != cid
            ):
                return (
                    f"the restored bytes {pos}-{pos + n - 1} (chunk {number}) differ from the "
                    "backup's hash"
                )
            pos += n
        if st.st_mtime_ns != e.mtime_ns:
            return "the restored modification time differs from the backup's"
        if stat.S_IMODE(st.st_mode) & 0o777 != e.mode & 0o777:
            return (
                f"the restored permissions are {stat.S_IMODE(st.st_mode) & 0o777:o}; the "
                f"backup recorded {e.mode & 0o777:o}"
            )
        return ""
    finally:
        os.close(fd)


def _read_exactly(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        data = os.read(fd, min(left, READ_BLOCK) if n > READ_BLOCK else left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def run_drill(
    repo: Repository,
    *,
    recovery_point: str | RecoveryPoint,
    scratch: str | os.PathLike,
    whole: bool = False,
    fraction: float = 0.01,
    largest: int = 20,
    cap_bytes: int | None = None,
    sink: ProgressSink | None = None,
    cancel: threading.Event | None = None,
    seed: int | None = None,
    name: str = "",
) -> DrillReport:
    """Restore a sample of ``recovery_point`` into a new folder in ``scratch``, compare it,
    delete it; returns the evidence. ``ScratchTooSmall`` before anything is written when the
    disk lacks the space."""
    cancel = cancel or threading.Event()
    repo.load_index()
    rp = repo.recovery_point(recovery_point)
    rep = Reporter(sink, "drill")
    rep.set_phase("sampling")
    sample = choose_sample(
        repo.iter_entries(rp, ChunkReader(repo)),
        whole=whole,
        fraction=fraction,
        largest=largest,
        cap_bytes=None if whole else cap_bytes,
        expected_files=(rp.stats or {}).get("files"),
        rng=random.Random(seed),
    )
    report = DrillReport(
        rp.id, point_files=sample.point_files, point_bytes=sample.point_bytes,
        over_cap=sample.over_cap,
    )  # fmt: skip
    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    check_space(scratch, sample.bytes)
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")[:64]
    folder = scratch / f"{FOLDER_PREFIX}{name or uuid.uuid4().hex}"
    os.mkdir(folder, 0o700)  # a new folder: the drill never writes into what is there
    try:
        rep.files_total, rep.bytes_total = len(sample.entries), sample.bytes

        def progress(nbytes: int, nfiles: int) -> None:
            rep.bytes_done += nbytes
            rep.files_done += nfiles
            rep.emit()

        writer = FileWriter(repo, folder, CONFLICT_SKIP, False, cancel.is_set, progress)
        try:
            rep.set_phase("restoring")
            restored = _restore(sample.entries, writer, rep, report, cancel)
            rep.set_phase("verifying")
            started = time.monotonic()
            for e in restored:
                if cancel.is_set():
                    report.cancelled = True
                    break
                rep.current = e.path
                reason = compare_file(repo, e, writer)
                if reason:
                    report.mismatches.append({"path": display_path(e.path), "reason": reason})
                rep.emit()
            report.verify_s = round(time.monotonic() - started, 3)
        finally:
            writer.close()
    finally:
        rep.set_phase("cleaning_up")
        shutil.rmtree(folder, ignore_errors=True)
    status = "cancelled" if report.cancelled else "completed"
    rep.finish(status, message=f"{len(report.mismatches)} mismatch(es)")
    return report


def _restore(entries, writer: FileWriter, rep: Reporter, report: DrillReport, cancel):
    restored = []
    started = time.monotonic()
    for e in entries:
        if cancel.is_set():
            report.cancelled = True
            break
        rep.current = e.path
        try:
            writer.restore(e)
        except Cancelled:
            report.cancelled = True
            break
        done = writer.report()
        rep.bytes_done += done["progress"][0]
        rep.files_done += done["progress"][1]
        if done["failed"]:
            _storage_check(writer.reader, e)
        for path, reason in done["failed"]:
            report.mismatches.append({"path": display_path(path), "reason": reason})
        if done["files"]:
            report.files += done["files"]
            report.bytes += done["bytes"]
            restored.append(e)
        rep.emit()
    report.restore_s = round(time.monotonic() - started, 3)
    return restored


def _storage_check(reader: ChunkReader, e: Entry) -> None:
    """A file that did not restore is a mismatch when its data is damaged or missing, but
    the vault's storage not answering proves nothing: that ``StorageError`` stops the drill
    (the job says the storage could not be used)."""
    for cid, _ in e.content:
        if cid != HOLE_ID:
            try:
                reader.read(cid)
            except IntegrityError:
                return  # damaged or missing data (PackDamaged): the mismatch stands
            return
