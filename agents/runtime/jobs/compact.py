"""The compact job: what ``haven.agent.compact`` does inside the runner (``jobs.runner``).

Open the repository, run the engine's compaction (``engine.compact``) with the portal's
threshold, and report what it rewrote. The agent never deletes: the portal checks the report
against storage and its own references before it deletes the old packs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agents.runtime import protocol
from agents.runtime.blobstore.base import BlobStore
from agents.runtime.engine import Repository
from agents.runtime.engine.compact import DEFAULT_THRESHOLD, run_compact
from agents.runtime.jobs.outbox import Outbox, outbox_for_cache
from agents.runtime.jobs.runner import JobRun, passphrase_text, run_job
from agents.runtime.protocol import JobResult

WRONG_PASSPHRASE = (
    "The encryption passphrase configured on this machine does not open the vault's backup "
    "data, so nothing was compacted"
)
CANCELLED = "Cancelled on request; nothing was deleted and the backup data is as before."


def compact_work(
    *,
    open_store: Callable[[], BlobStore],
    passphrase: Callable[[], str] | str,
    cache_dir: Path,
    pack_size: int | None = None,
    crash: Callable[[str], None] | None = None,
) -> Callable[[JobRun], JobResult]:
    def work(run: JobRun) -> JobResult:
        details = run.job.get("details") or {}
        threshold = details.get(protocol.COMPACT_THRESHOLD)
        if not isinstance(threshold, int | float) or not 0 < threshold < 1:
            threshold = DEFAULT_THRESHOLD
        secret = passphrase_text(passphrase)
        repo = Repository.open(open_store(), secret)
        options = {"pack_size": pack_size} if pack_size else {}
        result = run_compact(
            repo,
            threshold=threshold,
            sink=run.sink,
            cancel=run.cancel,
            cache_dir=Path(cache_dir),
            crash=crash,
            **options,
        )
        stats = {
            "packs_total": result.packs_total,
            "packs_rewritten": result.packs_rewritten,
            "bytes_rewritten": result.bytes_rewritten,
            "new_packs": len(result.new_packs),
            "bytes_written": result.bytes_written,
            "stored_bytes": result.bytes_written,
        }
        if result.status == "cancelled":
            return JobResult(status=protocol.JobStatus.CANCELLED, message=CANCELLED, stats=stats)
        return JobResult(
            status=protocol.JobStatus.COMPLETED,
            message=result.message,
            stats=stats,
            compaction=result.report if result.status == "completed" else None,
        )

    return work


def run_compact_job(
    job_id: str,
    *,
    portal,
    open_store: Callable[[], BlobStore],
    passphrase: Callable[[], str] | str,
    cache_dir: Path,
    max_per_second: float = 1.0,
    heartbeat: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    pack_size: int | None = None,
    outbox: Outbox | None = None,
    crash: Callable[[str], None] | None = None,
) -> dict:
    """Run the portal's compact job ``job_id`` and report on it; returns the posted result.
    ``crash(point)`` is the engine's kill-point hook (tests)."""
    return run_job(
        job_id,
        compact_work(
            open_store=open_store,
            passphrase=passphrase,
            cache_dir=cache_dir,
            pack_size=pack_size,
            crash=crash,
        ),
        portal=portal,
        outbox=outbox if outbox is not None else outbox_for_cache(Path(cache_dir)),
        kind="compact",
        wrong_passphrase=WRONG_PASSPHRASE,
        max_per_second=max_per_second,
        heartbeat=heartbeat,
        sleep=sleep,
    )
