"""The verify job: what ``haven.agent.verify`` does inside the runner (``jobs.runner``), and
the words of ``haven-agent verify`` on the machine.

Open the repository, read back and authenticate the packs of the job's slice and every
manifest (``engine.run_verify``), and say what is damaged: each pack that fails, the files
whose data it holds and the recovery points those files are in (docs/verify.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agents.runtime import engine, protocol
from agents.runtime.blobstore.base import BlobStore
from agents.runtime.engine.verify import VerifyReport, run_verify
from agents.runtime.jobs.outbox import Outbox, outbox_for_cache
from agents.runtime.jobs.runner import JobAborted, JobRun, passphrase_text, run_job
from agents.runtime.protocol import JobResult

WRONG_PASSPHRASE = (
    "The encryption passphrase configured on this machine does not open the vault's backup "
    "data, so nothing was verified"
)
CANCELLED = "Cancelled on request; what was read so far had no damage."
# How many damaged packs the job's message names (all of them are in ``damage``).
NAMED_IN_MESSAGE = 3


def job_slice(job: dict) -> tuple[int, int]:
    """The (slices, slice_no) the portal's job asks for; (1, 0): every pack."""
    details = job.get("details") or {}
    slices, slice_no = details.get("slices", 1), details.get("slice", 0)
    if (
        not isinstance(slices, int)
        or not isinstance(slice_no, int)
        or not 1 <= slices <= protocol.MAX_VERIFY_SLICES
        or not 0 <= slice_no < slices
    ):
        raise JobAborted(f"The portal asked for slice {slice_no!r} of {slices!r}, which is none.")
    return slices, slice_no


def damage_of(report: VerifyReport) -> list[dict]:
    """The report's damage in the wire's shape (``protocol.verify_damage``)."""
    entries = []
    for d in report.damaged:
        entries.append(
            {
                "pack": d.pack_id,
                "reason": d.reason[: protocol.MAX_REASON_CHARS],
                "recovery_points": sorted({f["recovery_point"] for f in d.files}),
                "files": d.files[: protocol.MAX_DAMAGE_FILES],
            }
        )
    if report.missing:
        entries.append(
            {
                "pack": "",
                "reason": "data these files need is not in the index (a pack is missing)",
                "recovery_points": sorted({f["recovery_point"] for f in report.missing}),
                "files": report.missing[: protocol.MAX_DAMAGE_FILES],
            }
        )
    for u in report.unreadable_recovery_points:
        entries.append(
            {
                "pack": "",
                "reason": f"manifest cannot be read: {u['reason']}"[: protocol.MAX_REASON_CHARS],
                "recovery_points": [u["recovery_point"]],
                "files": [],
            }
        )
    return entries[: protocol.MAX_DAMAGE_ENTRIES]


def describe_damage(damage: list[dict]) -> str:
    """One paragraph for the job page: which packs, which files, which recovery points."""
    points = sorted({p for d in damage for p in d["recovery_points"]})
    parts = []
    for d in damage[:NAMED_IN_MESSAGE]:
        what = f"pack {d['pack']}" if d["pack"] else "the repository"
        files = [f["path"] for f in d["files"][:3]]
        more = len(d["files"]) - len(files)
        where = f" (files: {', '.join(files)}{f' and {more} more' if more > 0 else ''})"
        parts.append(f"{what}: {d['reason']}{where if files else ''}")
    if len(damage) > NAMED_IN_MESSAGE:
        parts.append(f"and {len(damage) - NAMED_IN_MESSAGE} more")
    return (
        f"Damage found: {'; '.join(parts)}. "
        f"Recovery points affected: {', '.join(p[:8] for p in points) or 'none'}; they are "
        "marked Damaged. Files in them that need the damaged data cannot be restored from "
        "them: restore those files from an older point that is not marked Damaged. A new "
        "backup reuses the stored data and does not repair it (docs/verify.md)."
    )


def verify_result(report: VerifyReport, *, cancelled: bool) -> JobResult:
    damage = damage_of(report)
    stats = {
        "packs_checked": report.packs_checked,
        "packs_total": report.packs_total,
        "chunks_checked": report.chunks_checked,
        "bytes_checked": report.bytes_checked,
        "recovery_points_checked": report.recovery_points_checked,
    }
    if damage:
        return JobResult(
            status=protocol.JobStatus.FAILED,
            message=describe_damage(damage),
            stats=stats,
            damage=damage,
        )
    if cancelled:
        return JobResult(status=protocol.JobStatus.CANCELLED, message=CANCELLED, stats=stats)
    return JobResult(status=protocol.JobStatus.COMPLETED, stats=stats)


def verify_work(
    *, open_store: Callable[[], BlobStore], passphrase: Callable[[], str] | str
) -> Callable[[JobRun], JobResult]:
    def work(run: JobRun) -> JobResult:
        slices, slice_no = job_slice(run.job)
        store = open_store()
        secret = passphrase_text(passphrase)
        repo = engine.Repository.open(store, secret)
        report = run_verify(
            repo, sink=run.sink, cancel=run.cancel, slices=slices, slice_no=slice_no
        )
        run.sink.close()
        return verify_result(report, cancelled=run.cancel.is_set())

    return work


def run_verify_job(
    job_id: str,
    *,
    portal,
    open_store: Callable[[], BlobStore],
    passphrase: Callable[[], str] | str,
    cache_dir: Path,
    max_per_second: float = 1.0,
    heartbeat: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    outbox: Outbox | None = None,
) -> dict:
    """Run the portal's verify job ``job_id`` and report on it; returns the posted result."""
    return run_job(
        job_id,
        verify_work(open_store=open_store, passphrase=passphrase),
        portal=portal,
        outbox=outbox if outbox is not None else outbox_for_cache(Path(cache_dir)),
        kind="verify",
        wrong_passphrase=WRONG_PASSPHRASE,
        max_per_second=max_per_second,
        heartbeat=heartbeat,
        sleep=sleep,
    )
