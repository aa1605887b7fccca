"""Jobs: a backup started (one per machine at a time), the agent's reports of start,
progress and result, cancel, and the sweep that moves jobs whose agent is away or silent
to Waiting for agent, Failed or Cancelled. Restore and download jobs start in
``jobs.recovery.services``; every job ends here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents import dispatch
from agents.runtime import protocol
from agents.runtime.protocol import CompactReport
from jobs import selectors, services  # services: the package, for its seams
from jobs.models import BackupPolicy, Job
from jobs.services.alerts import alerts_after_job
from jobs.services.compaction import (
    CompactionRefused,
    compact_mark_started,
    compaction_apply,
)
from jobs.services.drills import DrillEvidenceRefused, drill_evidence_check
from jobs.services.live import (
    job_notify_finished,
    job_progress_publish,
    job_publish,
    progress_cache_write,
    progress_changes_shape,
)
from jobs.services.outbox import broker_failure_reason
from jobs.services.points import PointRefused, point_check, recovery_point_create
from jobs.services.pruning import repository_fence
from jobs.services.verify import VerifyReportRefused, verify_result_check, verify_result_record
from vaults import activity
from vaults.activity import Operation

log = logging.getLogger(__name__)


class BackupAlreadyRunning(Exception):
    def __init__(self, job: Job):
        super().__init__(f"A backup of {job.machine} is already running.")
        self.job = job


class SeedPending(Exception):
    """The machine's first backup is to come from a seed disk (policy: Offline) and the
    policy names no staging folder, so the portal cannot have the agent write it."""

    MESSAGE = (
        "This machine's policy makes the first backup offline, to a disk, and names no seed "
        "staging folder. Either name one in the backup policy (Initial backup: Offline), "
        "and Back up now has the agent write the first backup there; or run haven-agent "
        "seed export --to PATH on the machine. Then import the seed on the machine's "
        "Seeding page. Backups go over the network once the seed is imported."
    )

    def __init__(self):
        super().__init__(self.MESSAGE)


class JobNotCancellable(Exception):
    pass


class ProtectionStopped(Exception):
    """No backup of a machine whose protection is stopped (or whose data is deleted)."""


class ResultConflict(Exception):
    """A second, different result for a job that an agent's result already ended."""


class NoPolicy(Exception):
    """Back up now of a machine that has no backup policy yet: nothing to back up."""

    def __init__(self, machine):
        super().__init__(
            f"{machine.name} has no backup policy: choose what to back up first (the "
            "machine's page in the portal, Set the backup policy)."
        )


def backup_now(
    *,
    machine,
    user=None,
    retain_until: date | None = None,
    started_on_machine: bool = False,
    now: datetime | None = None,
) -> Job:
    """Back up now, from the portal or from the machine (``haven-agent backup``): the
    rules of ``backup_start`` and a policy to back up by. Refusals: ``NoPolicy``,
    ``ProtectionStopped``, ``SeedPending``, ``BackupAlreadyRunning``, and a
    ``ValidationError`` for a retain-until date in the past."""
    if not BackupPolicy.objects.filter(machine=machine).exists():
        raise NoPolicy(machine)
    return backup_start(
        machine=machine,
        user=user,
        retain_until=retain_until,
        started_on_machine=started_on_machine,
        now=now,
    )


def backup_start(
    *,
    machine,
    user=None,
    retain_until: date | None = None,
    trigger: str = Job.Trigger.ADHOC,
    scheduled_for: datetime | None = None,
    started_on_machine: bool = False,
    now: datetime | None = None,
) -> Job:
    """Queue a backup of ``machine`` and send it to its agent; one per machine at a time.

    While the machine's first backup is to come from a seed disk (``selectors.seed_waiting``)
    that backup is an offline backup to disk (``Job.Operation.SEED_EXPORT``): the agent
    writes it into the policy's seed staging folder and uploads nothing; without a staging
    folder, ``SeedPending``."""
    now = now or timezone.now()
    blockers = selectors.backup_blockers(machine=machine, retain_until=retain_until, now=now)
    if blockers.stopped:
        raise ProtectionStopped(blockers.stopped)
    if blockers.retain_until:
        raise ValidationError({"retain_until": [blockers.retain_until]})
    if blockers.running is not None:
        raise BackupAlreadyRunning(blockers.running)
    if blockers.seed_waiting and not blockers.seed_folder:
        raise SeedPending()
    operation, task, details = Job.Operation.BACKUP, protocol.BACKUP_TASK, {}
    if blockers.seed_waiting:
        operation, task = Job.Operation.SEED_EXPORT, protocol.SEED_EXPORT_TASK
        details = {protocol.SEED_FOLDER: blockers.seed_folder}
    status = Job.Status.QUEUED if machine.is_online(now) else Job.Status.WAITING
    try:
        with transaction.atomic():
            job = Job.objects.create(
                vault_id=machine.vault_id,
                machine=machine,
                operation=operation,
                status=status,
                trigger=trigger,
                scheduled_for=scheduled_for,
                # an offline backup records no point (the import does): nothing to retain
                retain_until=None if details else retain_until,
                created_by=user,
                started_on_machine=started_on_machine,
                details=details,
            )
            if trigger == Job.Trigger.ADHOC:
                activity.record(
                    operation=Operation.BACKUP_NOW,
                    user=user,
                    vault=machine.vault,
                    resource=machine,
                    detail={
                        "job": str(job.pk),
                        "retain_until": retain_until.isoformat() if retain_until else None,
                        "started_on_machine": started_on_machine,
                    },
                )
    except IntegrityError:
        running = Job.objects.active().backups().filter(machine=machine)
        raise BackupAlreadyRunning(running.first()) from None
    services._send_to_machine(machine, task, job_id=str(job.pk))
    job_publish(job)
    return job


def _clean_progress(event: dict) -> dict:
    progress = {}
    for key in protocol.PROGRESS_KEYS:
        value = event.get(key)
        if key in ("phase", "current"):
            progress[key] = str(value)[:500] if value is not None else None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            # a count the columns can hold (json_body already refused NaN and infinity)
            progress[key] = min(max(value, 0), protocol.MAX_COUNT)
        else:
            progress[key] = None
    return progress


def job_mark_started(*, job: Job, now: datetime | None = None, publish: bool = True) -> bool:
    """A queued or waiting job becomes running, its fragments pushed (unless the caller
    pushes them itself: ``publish=False``); returns whether it changed."""
    started = _start(job, now or timezone.now())
    if started and publish:
        job_publish(job)
    return started


def _start(job: Job, now: datetime) -> bool:
    """A queued or waiting job becomes running; returns whether it changed.

    The agent touches the repository only once the portal has answered its start (or
    first progress) report, so a backup becomes Running under the machine's fence: it
    waits for a pack deletion in progress, and collection deletes nothing more once it is
    Running (``jobs.services.pruning``). A compaction notes there which points it may move
    (``compaction.compact_mark_started``)."""
    fenced = (Job.Operation.BACKUP, Job.Operation.COMPACT)
    if job.operation not in fenced or job.machine_id is None:
        return _mark_running(job, now)
    with repository_fence(job.machine_id):
        job.refresh_from_db(fields=["status", "started_at", "last_report_at", "details"])
        started = _mark_running(job, now)
        if started and job.operation == Job.Operation.COMPACT:
            compact_mark_started(job)
        return started


def _mark_running(job: Job, now: datetime) -> bool:
    if job.status not in (Job.Status.QUEUED, Job.Status.WAITING):
        return False
    job.status = Job.Status.RUNNING
    job.started_at = now
    job.last_report_at = now
    job.save(update_fields=["status", "started_at", "last_report_at"])
    return True


# A running job's row is written at least this often while its agent reports (and at each
# phase change); below HAVEN_JOB_STALL_SECONDS' minimum, so the sweep never misreads it.
PROGRESS_WRITE_SECONDS = 5.0


def job_record_progress(
    *, job: Job, event: dict, now: datetime | None = None, heard: set[str] | None = None
) -> bool:
    """Store the latest progress and push it; returns whether the agent should stop.

    Every report goes to the cache (``selectors.live_progress``), which pages read before
    the row; the Job row itself is written when the phase changes and otherwise at most
    every ``PROGRESS_WRITE_SECONDS`` (docs/progress.md), and ``job_finish`` folds the
    last report in. A report that changes only numbers is pushed as small JSON the page
    applies to its fields; a start or a new phase re-renders the fragments (only for the
    groups in ``heard``, when the caller has asked which some socket hears)."""
    now = now or timezone.now()
    if job.status not in Job.ACTIVE:
        return True
    started = False
    if job.status != Job.Status.RUNNING:
        # A report before (or without) a start report starts the job: the one push below
        # shows both.
        started = _start(job, now)
    before = job.progress or {}
    progress = _clean_progress(event)
    rerender = started or progress_changes_shape(before, progress)
    due = (
        rerender
        or job.last_report_at is None
        or (now - job.last_report_at).total_seconds() >= PROGRESS_WRITE_SECONDS
    )
    job.progress = progress
    job.bytes_transferred = int(progress.get("stored_bytes") or 0)
    job.last_report_at = now
    if not progress_cache_write(job):
        due = True  # the cache is away: the row is where the report is kept
    if due:
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
            progress=job.progress, bytes_transferred=job.bytes_transferred, last_report_at=now
        )
    job_progress_publish(job, rerender=rerender, heard=heard)
    return job.cancel_requested_at is not None


def _progress_fold(job: Job) -> None:
    """Write the last cached report into a running job's row (before its result)."""
    cached = selectors.live_progress(job)
    if cached is not None:
        Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(**cached)


def _clean_warnings(warnings: Iterable) -> list[dict]:
    cleaned = []
    for warning in warnings:
        if isinstance(warning, dict):
            cleaned.append(
                {
                    "path": str(warning.get("path") or "")[:1000],
                    "reason": str(warning.get("reason") or "")[:500],
                }
            )
        if len(cleaned) >= protocol.MAX_WARNINGS:
            break
    return cleaned


def job_finish(
    *,
    job: Job,
    status: str,
    error: str = "",
    warnings: Iterable = (),
    warning_count: int | None = None,
    stats: dict | None = None,
    snapshot_id: str = "",
    manifest_blob: str = "",
    pack_ids: Iterable[str] = (),
    result_id: str = "",
    damage: list[dict] | None = None,
    compaction: CompactReport | None = None,
    now: datetime | None = None,
) -> Job:
    """The agent's final word on a job: status, warnings, and the recovery point it made.

    A point the portal refuses (``points.point_check``) is not recorded, and nothing else
    changes; an unfinished job then ends Failed with the reason, and ``PointRefused`` is
    raised after that is saved. The agent names each result (``result_id``, kept from its
    outbox across retries and restarts): the same result again changes nothing and gets the
    same answer; another one for a job an agent's result already ended raises
    ``ResultConflict``. A successful result that arrives after the sweep failed the job
    (its agent was silent, or the portal was away) is still recorded, with a note."""
    now = now or timezone.now()
    _progress_fold(job)
    if (
        compaction is not None
        and job.operation == Job.Operation.COMPACT
        and status == Job.Status.COMPLETED
        and job.result_id is None
    ):
        # Checked and applied before the job ends (CompactionUnverifiable: the agent sends
        # the result again later), also when it comes late for a job the sweep failed; the
        # same result again finds its id recorded and skips this (a copy racing it is
        # refused here, the old packs being gone, and then answered as the same result).
        try:
            outcome = compaction_apply(job=job, report=compaction, now=now)
            error = f"{error} {outcome.message}".strip()
        except CompactionRefused as exc:
            log.warning("refused the compaction report of job %s: %s", job.pk, exc)
            status = Job.Status.FAILED
            error = (
                f"The portal refused this compaction's report: {exc}. Nothing was deleted "
                "and every recovery point is as before; if this repeats, check the machine "
                "(its agent reports what the portal cannot verify)."
            )
    job, refused, point = _finish(
        job=job,
        result_id=result_id,
        status=status,
        error=error,
        warnings=warnings,
        warning_count=warning_count,
        stats=stats or {},
        snapshot_id=snapshot_id,
        manifest_blob=manifest_blob,
        pack_ids=list(pack_ids),
        damage=damage or [],
        now=now,
    )
    if refused is not None:
        raise refused
    if point is not None:
        services._enqueue("retention_apply_machine", str(job.machine_id))
    return job


def _finish(
    *,
    job,
    result_id,
    status,
    error,
    warnings,
    warning_count,
    stats,
    snapshot_id,
    manifest_blob,
    pack_ids,
    damage,
    now,
):
    success = status in (Job.Status.COMPLETED, Job.Status.WARNING)
    # The machine's fence (pruning.repository_fence): the packs checked below cannot be
    # collected before the point naming them is committed.
    with repository_fence(job.machine_id):
        job = (
            Job.objects.select_for_update(of=("self",))
            .select_related("machine", "vault", "created_by")
            .get(pk=job.pk)
        )
        if job.result_id is not None:
            if result_id and str(job.result_id) == result_id:
                return job, None, None  # the same result again: the same answer
            if result_id:
                log.warning("refused a second, different result for job %s", job.pk)
                return job, ResultConflict("This job has finished; its result was recorded."), None
        swept = job.status in Job.FINISHED  # ended by the portal, not by an agent's result
        if swept and not success:
            # The portal ended the job already (the sweep failed it while the agent was
            # silent, then the agent came back and was told to stop): keep the portal's
            # reason. A late success is still recorded below, as its recovery point is real.
            # So is the damage a late verify report names.
            late = None
            if damage and job.operation == Job.Operation.VERIFY:
                late = _late_damage(job, error, damage, stats, now)
            if late is None:
                _keep_result_id(job, result_id)
            return job, late, None
        if job.status in (Job.Status.COMPLETED, Job.Status.WARNING):
            recorded = getattr(job, "recovery_point", None)
            if snapshot_id and (recorded is None or recorded.snapshot_id != snapshot_id):
                log.warning(
                    "refused a second result naming another point for job %s of machine %s",
                    job.pk,
                    job.machine_id,
                )
                return job, PointRefused("This job has finished; its result was recorded."), None
            return job, None, None  # the same result delivered again
        refused = None
        if job.operation == Job.Operation.DRILL:
            # A drill names the point it restored: evidence, not a new point.
            refused, status, error = _drill_evidence(job, status, error, stats, snapshot_id)
            if refused is not None and job.status in Job.FINISHED:
                return job, refused, None  # a late result: the portal's reason stays
            snapshot_id = ""
        if job.operation == Job.Operation.SEED_EXPORT:
            # The seed's point lives on the disk, not in the container: it is recorded by
            # the import (seeding.py); the job keeps what was written, for its pages.
            if success:
                _seed_written(job, snapshot_id, stats)
            snapshot_id = ""
        if success and snapshot_id:
            try:
                manifest_blob, pack_ids = point_check(
                    job=job, snapshot_id=snapshot_id, manifest_blob=manifest_blob, pack_ids=pack_ids
                )
            except PointRefused as exc:
                if job.status in Job.FINISHED:
                    return job, exc, None  # a late result: the portal's reason stays
                refused = exc
                status = Job.Status.FAILED
                error = (
                    f"The portal refused the recovery point this backup reported: {exc.message} "
                    "No recovery point was recorded; back up again, and if this repeats, "
                    "check the machine (its agent reports what the portal cannot verify)."
                )
        try:
            status = verify_result_check(job=job, status=status, damage=damage, stats=stats)
        except VerifyReportRefused as exc:
            if job.status in Job.FINISHED:
                return job, exc, None
            refused, damage, status = exc, [], Job.Status.FAILED
            error = (
                f"The portal refused the verify report of the agent: {exc.message} Nothing "
                "was marked; check the machine (its agent reports what the portal cannot "
                "accept) and verify again."
            )
        if swept and refused is None:
            error = _late_note(job, now) + (f" {error}" if error else "")
        # A refused point keeps no result id: the same result again is checked, and refused,
        # again (the same answer).
        job.result_id = (result_id or None) if refused is None else None
        job = _save_final(
            job,
            status=status,
            error=error,
            warnings=warnings,
            warning_count=warning_count,
            stats=stats,
            now=now,
        )
        if job.operation == Job.Operation.VERIFY and refused is None:
            verify_result_record(job=job, damage=damage, stats=stats, now=now)
        point = None
        if refused is None and success and snapshot_id:
            point = recovery_point_create(
                job=job,
                snapshot_id=snapshot_id,
                manifest_blob=manifest_blob,
                stats=stats,
                pack_ids=pack_ids,
                now=now,
            )
        alerts_after_job(job=job, now=now)
        job_notify_finished(job=job)
        job_publish(job)
        if point is not None and job.vault.replicated:
            # Copy the new point now rather than at the next periodic pass.
            services._enqueue("replicate_machine", str(job.machine_id))
    return job, refused, point


def _late_damage(job: Job, error: str, damage: list, stats: dict, now: datetime):
    """A verify the sweep ended whose agent then reported damage: the damage is real, so
    the points are marked and the alert raised; returns the refusal of a forged report."""
    try:
        verify_result_check(job=job, status=job.status, damage=damage, stats=stats)
    except VerifyReportRefused as exc:
        return exc
    job.error = f"{job.error} The agent's report arrived later and found damage: {error}"[:4000]
    job.save(update_fields=["error"])
    verify_result_record(job=job, damage=damage, stats=stats, now=now)
    alerts_after_job(job=job, now=now)
    job_publish(job)
    return None


def _drill_evidence(job: Job, status: str, error: str, stats: dict, snapshot_id: str):
    """A drill's result: its evidence kept on the job, or refused (the job then fails)."""
    try:
        evidence = drill_evidence_check(
            job=job, status=status, stats=stats, snapshot_id=snapshot_id
        )
    except DrillEvidenceRefused as exc:
        log.warning("refused the evidence of drill %s from machine %s: %s", job.pk,
                    job.machine_id, exc.message)  # fmt: skip
        return (
            exc,
            Job.Status.FAILED,
            f"The portal refused this drill's evidence: {exc.message}. Nothing was proven; "
            "run the drill again, and if this repeats, check the machine that ran it.",
        )
    if evidence:
        job.details = {**job.details, "evidence": evidence}
        stats["stored_bytes"] = evidence["bytes"]  # the job's Data transferred
    return None, status, error


def _seed_written(job: Job, snapshot_id: str, stats: dict) -> None:
    """Keep an offline backup's account of its seed (what the agent reports; the import
    checks the seed itself) on the job."""
    point = snapshot_id if len(snapshot_id) == 32 and set(snapshot_id) <= _HEX else ""
    job.details = {
        **job.details,
        "seed": {
            "recovery_point_id": point,
            **{key: int(stats.get(key) or 0) for key in _SEED_STATS},
        },
    }


_HEX = frozenset("0123456789abcdef")
_SEED_STATS = ("files", "logical_bytes", "stored_bytes", "blobs")


def _keep_result_id(job: Job, result_id: str) -> None:
    if result_id and job.result_id is None:
        job.result_id = result_id
        job.save(update_fields=["result_id"])


def _late_note(job: Job, now: datetime) -> str:
    ended = timezone.localtime(job.ended_at).strftime("%H:%M") if job.ended_at else "earlier"
    return (
        f"The agent's result arrived late (at {timezone.localtime(now).strftime('%H:%M')}): "
        f"the portal had ended this job as {job.get_status_display()} at {ended} because it "
        "had no word from the agent (the agent or the portal was away). The result the "
        "agent kept is recorded."
    )


def _save_final(job, *, status, error, warnings, warning_count, stats, now) -> Job:
    warnings = _clean_warnings(warnings)
    if status == Job.Status.COMPLETED and warnings:
        status = Job.Status.WARNING
    if status not in Job.FINISHED:
        raise ValueError(f"{status!r} is not a final job status")
    job.status = status
    job.error = error[:4000]
    job.warnings = warnings
    job.warning_count = warning_count if warning_count is not None else len(warnings)
    job.started_at = job.started_at or now
    job.ended_at = now
    job.bytes_transferred = int(
        stats.get("added_bytes") or stats.get("stored_bytes") or job.bytes_transferred or 0
    )
    if job.progress:
        job.progress = {**job.progress, "current": None, "eta_s": 0}
    job.save()
    return job


def job_fail(*, job: Job, reason: str, now: datetime | None = None) -> Job:
    """Fail an unfinished job from the portal side (agent offline, agent gone quiet)."""
    now = now or timezone.now()
    updated = Job.objects.filter(pk=job.pk, status__in=Job.ACTIVE).update(
        status=Job.Status.FAILED, error=reason, ended_at=now
    )
    if not updated:
        return job
    job.refresh_from_db(from_queryset=Job.objects.select_related("machine", "vault", "created_by"))
    alerts_after_job(job=job, now=now)
    job_notify_finished(job=job)
    job_publish(job)
    return job


def job_cancel(*, job: Job, user=None, now: datetime | None = None) -> Job:
    """Cancel: a job the agent has not started ends at once; a running one is asked to stop
    (the answer to its next progress report says so) and ends when the agent confirms."""
    now = now or timezone.now()
    if job.operation == Job.Operation.REPLICATE:
        raise JobNotCancellable(
            "Replication runs on the portal's worker and is not cancelled: a pass copies only "
            "what the secondary lacks, and the next one resumes where it stopped."
        )
    if job.status in (Job.Status.QUEUED, Job.Status.WAITING):
        updated = Job.objects.filter(
            pk=job.pk, status__in=(Job.Status.QUEUED, Job.Status.WAITING)
        ).update(
            status=Job.Status.CANCELLED,
            cancel_requested_at=now,
            ended_at=now,
            error=f"Cancelled by {user.get_username() if user else 'the portal'} before it started.",
        )
        job.refresh_from_db()
        if updated:
            job_publish(job)
            return job
    if job.status != Job.Status.RUNNING:
        raise JobNotCancellable(
            f"This job is {job.get_status_display().lower()}; nothing to cancel."
        )
    if job.cancel_requested_at is None:
        job.cancel_requested_at = now
        job.save(update_fields=["cancel_requested_at"])
        if job.machine is not None:
            services._send_to_machine(job.machine, protocol.CANCEL_TASK, job_id=str(job.pk))
        job_publish(job)
    return job


def jobs_sweep(*, now: datetime | None = None) -> dict:
    """Once a minute: Queued -> Waiting for agent -> Failed; running jobs whose agent went
    quiet fail (or end Cancelled when a cancel was asked for)."""
    now = now or timezone.now()
    counts = {"waiting": 0, "failed": 0}
    pickup = now - timedelta(seconds=settings.HAVEN_JOB_PICKUP_SECONDS)
    for job in Job.objects.filter(status=Job.Status.QUEUED, created_at__lte=pickup).select_related(
        "machine", "vault", "created_by"
    ):
        if Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(
            status=Job.Status.WAITING
        ):
            job.status = Job.Status.WAITING
            job_publish(job)
            counts["waiting"] += 1
    wait_minutes = settings.HAVEN_JOB_AGENT_WAIT_MINUTES
    deadline = now - timedelta(minutes=wait_minutes)
    overdue = list(
        Job.objects.filter(status=Job.Status.WAITING, created_at__lte=deadline).select_related(
            "machine"
        )
    )
    unsent = dispatch.pending_for_jobs([job.pk for job in overdue])
    for job in overdue:
        if job.pk in unsent:  # it never left the portal: the broker was away, not the agent
            job_fail(job=job, reason=broker_failure_reason(job, unsent[job.pk], now=now), now=now)
            counts["failed"] += 1
            continue
        if job.operation == Job.Operation.IMPORT:
            job_fail(job=job, reason=IMPORT_NOT_STARTED.format(minutes=wait_minutes), now=now)
            counts["failed"] += 1
            continue
        name = job.machine.name if job.machine else "the machine"
        again = {
            Job.Operation.BACKUP: "press Back up now again",
            Job.Operation.SEED_EXPORT: "press Back up now again",
            Job.Operation.VERIFY: "press Verify now again (or let the next weekly verify run)",
            Job.Operation.DRILL: "run the restore drill again (Run restore drill)",
            Job.Operation.COMPACT: "start it again (Compact now on the machine's page)",
        }.get(job.operation, "start the recovery again (Recover Data)")
        job_fail(
            job=job,
            reason=(
                f"The agent on {name} did not pick up this job within {wait_minutes} minutes "
                f"(Waiting for agent). Check that {name} is turned on and connected, and that "
                f"the Haven agent service is running (haven-agent status); then {again}."
            ),
            now=now,
        )
        counts["failed"] += 1
    stall = now - timedelta(seconds=settings.HAVEN_JOB_STALL_SECONDS)
    # Replicate jobs run on the portal's worker, not an agent: replication fails its own.
    for job in (
        Job.objects.filter(status=Job.Status.RUNNING, last_report_at__lte=stall)
        .exclude(operation=Job.Operation.REPLICATE)
        .select_related("machine")
    ):
        name = job.machine.name if job.machine else "the machine"
        if job.cancel_requested_at is not None:
            if Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
                status=Job.Status.CANCELLED,
                ended_at=now,
                error="Cancelled; the agent stopped before confirming.",
            ):
                job.refresh_from_db()
                job_notify_finished(job=job)
                job_publish(job)
            continue
        seconds = settings.HAVEN_JOB_STALL_SECONDS
        job_fail(job=job, reason=_stall_reason(job, name, seconds), now=now)
        counts["failed"] += 1
    return counts


# A seed import runs on the portal's worker, not on an agent (jobs/services/seeding.py).
IMPORT_NOT_STARTED = (
    "The portal's worker did not start this seed import within {minutes} minutes: check that "
    "the portal's Celery worker (queue portal) runs, then import the seed again; only what "
    "is still missing is copied."
)


def _stall_reason(job: Job, name: str, seconds: int) -> str:
    if job.operation == Job.Operation.IMPORT:
        return (
            f"The portal's worker stopped reporting on this seed import for more than "
            f"{seconds} seconds. What was copied is complete; import the seed again to copy "
            "the rest (manage.py seed_import PATH, or the machine's Seeding page)."
        )
    lost = (
        f"The agent on {name} stopped reporting for more than {seconds} seconds, so the "
        f"{job.get_operation_display().lower()} was abandoned: the agent was stopped or the "
        "machine lost its connection. "
    )
    if job.operation == Job.Operation.DRILL:
        return lost + (
            "Nothing was proven; its copy may be left in the scratch folder, in a folder "
            "named haven-drill-<this job's id>. Check the agent on the machine (haven-agent "
            "status) and run the drill again."
        )
    if job.operation == Job.Operation.BACKUP:
        return lost + (
            "No recovery point was made; the data uploaded so far is reused by the next "
            "backup. Check the agent on the machine (haven-agent status) and back up again."
        )
    if job.operation == Job.Operation.SEED_EXPORT:
        return lost + (
            "The seed is incomplete; what was written to the staging folder stays and is "
            "reused. Check the agent on the machine (haven-agent status) and back up again."
        )
    if job.operation == Job.Operation.VERIFY:
        return lost + (
            "Nothing in the vault was changed. Check the agent on the machine (haven-agent "
            "status) and press Verify now again."
        )
    if job.operation == Job.Operation.COMPACT:
        return lost + (
            "Nothing was deleted and every recovery point is as restorable as before; the "
            "next Compact job finishes the work. Check the agent on the machine "
            "(haven-agent status)."
        )
    return lost + (
        "Files it finished are complete; the one being written may be missing. Check the "
        "agent on the machine (haven-agent status) and start the recovery again."
    )
