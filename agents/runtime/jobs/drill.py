"""The restore drill job (``haven.agent.drill``): what it does inside the job runner.

The portal's signed task message names the recovery point, the machine whose backups it is
(empty: this machine's own; another machine's is read through the read-only grant the
portal issues against the policy that set the drill up, ``recovery.source``), the sample and
the scratch folder. The engine does the drill (``engine.drill.run_drill``); the evidence
goes back as the job's result: counts in ``stats`` (``protocol.DRILL_STATS``), each
mismatch named in ``warnings``.
"""

from __future__ import annotations

from pathlib import Path

from agents.runtime import protocol
from agents.runtime.engine.drill import DrillReport, run_drill
from agents.runtime.jobs.outbox import outbox_of
from agents.runtime.jobs.runner import JobAborted, JobRun, run_job
from agents.runtime.protocol import JobResult
from agents.runtime.recovery.source import open_for_task
from agents.runtime.tasks import AgentContext

WRONG_PASSPHRASE = "The restore drill did not run: the passphrase known to this machine is wrong"
SCRATCH_FOLDER = "drills"  # in the agent's cache folder, when the policy names none


def scratch_folder(ctx: AgentContext, scratch: str) -> Path:
    """The policy's scratch folder (absolute), else ``drills`` in the agent's cache."""
    if scratch:
        if not scratch.startswith("/") or "\0" in scratch:
            raise JobAborted(
                f"The drill's scratch folder {scratch!r} is not an absolute path; set one like "
                "/var/tmp/haven-drills in the backup policy."
            )
        return Path(scratch)
    if "cache_dir" in ctx.extra:
        return Path(ctx.extra["cache_dir"]) / SCRATCH_FOLDER
    return Path(ctx.settings.cache_path) / SCRATCH_FOLDER


def drill_result(report: DrillReport) -> JobResult:
    """The evidence as the job's result: Completed when every byte matched."""
    stats = {
        "files": report.files,
        "bytes": report.bytes,
        "restore_ms": round(report.restore_s * 1000),
        "verify_ms": round(report.verify_s * 1000),
        "mismatches": len(report.mismatches),
        "point_files": report.point_files,
        "point_bytes": report.point_bytes,
        "over_cap": report.over_cap,
        "stored_bytes": report.bytes,  # read from the vault: the job's Data transferred
    }
    if report.cancelled:
        status, message = protocol.JobStatus.CANCELLED, "The restore drill was cancelled."
    elif report.mismatches:
        first = report.mismatches[0]
        more = len(report.mismatches) - 1
        status = protocol.JobStatus.FAILED
        message = (
            f"The restore drill found {len(report.mismatches)} file(s) that do not restore "
            f"as backed up: {first['path']}: {first['reason']}"
            + (f" (and {more} more, listed below)" if more else "")
            + ". Run a verify of the vault's storage and back this machine up again."
        )
    else:
        status, message = protocol.JobStatus.COMPLETED, ""
    return JobResult(
        status=status,
        message=message,
        warnings=report.mismatches[: protocol.MAX_WARNINGS],
        warning_count=len(report.mismatches),
        stats=stats,
        recovery_point_id=report.recovery_point,
    )


def run_drill_job(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    source_machine_id: str = "",
    sample: str = protocol.DRILL_SAMPLE,
    percent: float = protocol.DRILL_DEFAULT_PERCENT,
    cap_bytes: int = protocol.DRILL_DEFAULT_CAP_MB * 1024 * 1024,
    scratch: str = "",
    seed: int | None = None,
) -> dict:
    """Run drill job ``job_id`` with live progress; returns the result posted."""

    def work(run: JobRun) -> JobResult:
        folder = scratch_folder(ctx, scratch)
        repo, _ = open_for_task(ctx, source_machine_id, cached=False)
        report = run_drill(
            repo,
            recovery_point=recovery_point,
            scratch=folder,
            whole=sample == protocol.DRILL_WHOLE,
            fraction=min(max(float(percent), 0.0), 100.0) / 100,
            largest=protocol.DRILL_LARGEST,
            cap_bytes=max(int(cap_bytes), 0),
            sink=run.sink,
            cancel=run.cancel,
            seed=seed,
            name=job_id,
        )
        return drill_result(report)

    return run_job(
        job_id,
        work,
        portal=ctx.require_portal(),
        outbox=outbox_of(ctx),
        kind="drill",
        wrong_passphrase=WRONG_PASSPHRASE,
    )
