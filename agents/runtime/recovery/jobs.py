"""The restore and download jobs: what ``haven.agent.recovery.restore`` and ``.download`` do
inside the job runner (``agents.runtime.jobs.runner``, the same protocol as backups: fetch,
start, progress with the portal's cancel in the answer, result; docs/jobs.md).

The selection and the target folder come in the signed task message, not from the portal's
job, so the portal's database does not hold them.
"""

from __future__ import annotations

import tempfile

from agents.runtime import engine, protocol
from agents.runtime.jobs.outbox import outbox_of
from agents.runtime.jobs.runner import JobRun, run_job
from agents.runtime.protocol import JobResult
from agents.runtime.recovery import ops
from agents.runtime.recovery.source import open_for_task
from agents.runtime.tasks import AgentContext

WRONG_PASSPHRASE = "Nothing was restored: the passphrase known to this machine is wrong"
SPOOL_IN_MEMORY = 8 << 20  # a download archive larger than this is spooled to a temp file


def restore_result(res: engine.RestoreResult) -> JobResult:
    """The engine's ``RestoreResult`` as the job's result."""
    status = protocol.job_status_of(res.status)
    problems = [{"path": f["path"], "reason": f["reason"]} for f in res.failed + res.warnings]
    say = status == protocol.JobStatus.CANCELLED or res.failed
    return JobResult(
        status=status,
        message=res.message[0].upper() + res.message[1:] if say and res.message else "",
        warnings=problems,
        warning_count=len(problems),
        stats={
            "files": res.files,
            "bytes": res.bytes,
            "stored_bytes": res.bytes,
            "skipped": res.skipped,
            "failed": len(res.failed),
        },
    )


def run_restore_job(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    paths: list[str],
    target: str,
    on_conflict: str,
    restore_permissions: bool,
    source_machine_id: str = "",
    source_region: str = "",
    max_per_second: float = 1.0,
    heartbeat: float = 2.0,
) -> dict:
    """Run restore job ``job_id`` with live progress; returns the result posted."""

    def work(run: JobRun) -> JobResult:
        repo, _ = open_for_task(
            ctx, source_machine_id, cached=False, region=source_region
        )  # before any write
        res = ops.restore(
            repo,
            recovery_point=recovery_point,
            paths=paths,
            target=target or "/",
            on_conflict=on_conflict,
            restore_permissions=restore_permissions,
            sink=run.sink,
            cancel=run.cancel,
        )
        return restore_result(res)

    return run_job(
        job_id,
        work,
        portal=ctx.require_portal(),
        outbox=outbox_of(ctx),
        kind="restore",
        wrong_passphrase=WRONG_PASSPHRASE,
        max_per_second=max_per_second,
        heartbeat=heartbeat,
    )


def run_download_job(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    paths: list[str],
    max_bytes: int = protocol.DOWNLOAD_MAX_BYTES,
    source_machine_id: str = "",
    source_region: str = "",
) -> dict:
    """Build the archive of a few files and stream it to the portal for the browser."""

    def work(run: JobRun) -> JobResult:
        repo, _ = open_for_task(ctx, source_machine_id, region=source_region)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            made = ops.download_archive(
                repo,
                recovery_point=recovery_point,
                paths=paths,
                out=spool,
                max_bytes=min(int(max_bytes), protocol.DOWNLOAD_MAX_BYTES),
            )
            size = spool.tell()
            spool.seek(0)
            ctx.require_portal().upload(f"recovery/downloads/{job_id}/", spool, size)
        failed = made["failed"]
        return JobResult(
            status=protocol.JobStatus.WARNING if failed else protocol.JobStatus.COMPLETED,
            message=f"{len(failed)} file(s) could not be read and were left out" if failed else "",
            warnings=failed,
            warning_count=len(failed),
            stats={"files": made["files"], "bytes": made["bytes"], "stored_bytes": size},
        )

    return run_job(
        job_id,
        work,
        portal=ctx.require_portal(),
        outbox=outbox_of(ctx),
        kind="download",
        wrong_passphrase=WRONG_PASSPHRASE,
    )
