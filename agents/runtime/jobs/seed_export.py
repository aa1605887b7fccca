"""The offline backup to disk: what ``haven.agent.seed.export`` does inside the runner.

When a machine's policy makes the first backup Offline and names a seed staging folder, the
portal's Back up now (or the schedule) starts this job instead of a backup: the agent writes
the first backup into that folder with ``seed.seed_export`` (the same engine, repository id
and keys; nothing is uploaded: only ``config`` and ``keys/`` are read from the machine's
container) and reports what it wrote. The disk is then shipped and imported on the portal
(``jobs/services/seeding.py``); docs/seeding.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from agents.runtime import protocol, seed
from agents.runtime.blobstore.base import BlobStore
from agents.runtime.jobs.backup import check_cache, system_state
from agents.runtime.jobs.outbox import Outbox, outbox_for_cache
from agents.runtime.jobs.runner import JobAborted, JobRun, passphrase_text, run_job
from agents.runtime.protocol import JobResult

WRONG_PASSPHRASE = (
    "The encryption passphrase configured on this machine does not open the vault's backup "
    "data, so no seed was written"
)
CANCELLED = "Cancelled on request; the seed is incomplete (what was written stays and is reused)."


def _aborted(exc: seed.SeedError) -> JobAborted:
    text = str(exc)
    return JobAborted(text[:1].upper() + text[1:] + ".")


def seed_export_work(
    *,
    open_store: Callable[[], BlobStore],
    passphrase: Callable[[], str] | str,
    cache_dir: Path,
    identity: dict,
) -> Callable[[JobRun], JobResult]:
    """The offline backup's work for ``run_job``; ``identity`` names the vault and machine
    in the seed header (the registration's)."""

    def work(run: JobRun) -> JobResult:
        job = run.job
        policy = (job.get("policy") or {}).get("spec") or {}
        if policy.get(protocol.POLICY_PROTECTION) == protocol.PROTECTION_STOPPED:
            raise JobAborted(
                "Protection of this machine is stopped in the portal: it runs no backups "
                "until someone chooses Resume backup there."
            )
        if not policy.get("items"):
            raise JobAborted(
                "This machine has no backup policy with items to back up; set one in the "
                "portal (Backup policy) and back up again."
            )
        raw = str((job.get("details") or {}).get(protocol.SEED_FOLDER) or "")
        if not raw:
            raise JobAborted(
                "The portal named no seed staging folder for this offline backup; set one in "
                "the backup policy (Initial backup: Offline) and back up again."
            )
        folder = Path(raw)
        try:
            staged = seed.staging_check(folder)
        except seed.SeedError as exc:
            raise _aborted(exc) from None
        minimum = int(job.get("min_cache_free_bytes") or 0)
        check_cache(Path(cache_dir), 0, minimum=minimum)
        mapped, collected = system_state(policy, Path(cache_dir))
        try:
            result, header = seed.seed_export(
                container=open_store(),
                staging=folder,
                passphrase=passphrase_text(passphrase),
                items=list(policy["items"]),
                excludes=[*policy.get("exclude_globs", []), *policy.get("exclude_types", [])],
                identity=identity,
                cache_dir=Path(cache_dir),
                sink=run.sink,
                cancel=run.cancel,
                mapped=mapped,
                warnings=collected() if collected is not None else [],
                check_space=lambda data_bytes: seed.staging_space_check(
                    folder, data_bytes, staged=staged
                ),
            )
        except seed.StagingTooSmall as exc:  # raised from the walk's count: it sets cancel
            raise _aborted(exc) from None
        except seed.ForeignSeed:
            raise JobAborted(
                f"The seed staging folder {folder} holds the seed of another repository "
                "(another machine, or this one before it was registered again): choose an "
                "empty folder, then back up again."
            ) from None
        except seed.SeedError as exc:
            if run.cancel.is_set():
                return JobResult(status=protocol.JobStatus.CANCELLED, message=CANCELLED)
            raise _aborted(exc) from None
        run.sink.close()
        warnings = list(result.warnings) or run.sink.warnings
        return JobResult(
            status=protocol.job_status_of(result.status),
            message=result.message or "",
            warnings=warnings,
            warning_count=max(len(warnings), run.sink.warning_count),
            stats={
                "files": result.files,
                "logical_bytes": result.logical_bytes,
                "new_bytes": result.new_bytes,
                "added_bytes": result.added_bytes,
                "stored_bytes": sum(b["size"] for b in header["blobs"]),
                "blobs": len(header["blobs"]),
            },
            # The seed's recovery point: the portal records it only when the seed is
            # imported; the job keeps its id to say which seed the folder holds.
            recovery_point_id=header["recovery_point_id"],
        )

    return work


def run_seed_export_job(
    job_id: str,
    *,
    portal,
    open_store: Callable[[], BlobStore],
    passphrase: Callable[[], str] | str,
    cache_dir: Path,
    identity: dict,
    max_per_second: float = 1.0,
    heartbeat: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    outbox: Outbox | None = None,
) -> dict:
    """Run the portal's offline backup job ``job_id`` and report on it (as
    ``backup.run_backup_job`` does); returns the posted result."""
    return run_job(
        job_id,
        seed_export_work(
            open_store=open_store, passphrase=passphrase, cache_dir=cache_dir, identity=identity
        ),
        portal=portal,
        outbox=outbox if outbox is not None else outbox_for_cache(Path(cache_dir)),
        kind="seed",
        wrong_passphrase=WRONG_PASSPHRASE,
        max_per_second=max_per_second,
        heartbeat=heartbeat,
        sleep=sleep,
    )
