"""Writes of the jobs app: policies, the scheduler, jobs and their progress, recovery points,
retention and garbage collection, alerts. Views, API endpoints and tasks call these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import KombuError

from agents import dispatch
from agents.runtime import protocol
from agents.runtime.blobstore import BlobNotFound, StorageError
from agents.runtime.engine import layout
from jobs import policy_rules, retention
from jobs.models import Alert, BackupPolicy, Job, RecoveryPoint, ScheduledRun
from jobs.schedule import Schedule, occurrences, zone

log = logging.getLogger(__name__)


class BackupAlreadyRunning(Exception):
    def __init__(self, job: Job):
        super().__init__(f"A backup of {job.machine} is already running.")
        self.job = job


class JobNotCancellable(Exception):
    pass


def job_group(job_id) -> str:
    return f"job.{job_id}"


def vault_group(vault_id) -> str:
    # The vaults app registers the "vault" watch kind with this group name.
    return f"vault.{vault_id}"


def machine_is_online(machine, now: datetime | None = None) -> bool:
    return machine.is_online(now)


# Every agent task goes through agents.dispatch.send_after_commit (its docstring has the
# rule for failures). Called through this name, which tests/jobs/conftest.py replaces.
_send_to_machine = dispatch.send_after_commit


def _enqueue(task_path: str, *args) -> None:
    """Run a portal task after commit (``jobs.tasks.<name>``)."""

    def send() -> None:
        from jobs import tasks

        try:
            getattr(tasks, task_path).delay(*args)
        except KombuError:  # the broker is down: the daily run catches up
            log.warning("could not enqueue %s%r", task_path, args, exc_info=True)

    transaction.on_commit(send)


# --- policies ---------------------------------------------------------------------------
@transaction.atomic
def policy_save(*, machine, spec: dict, user=None, now: datetime | None = None) -> BackupPolicy:
    """Create or change a machine's policy; raises ValidationError naming every broken rule."""
    now = now or timezone.now()
    problems = policy_rules.spec_problems(spec)
    if problems:
        raise ValidationError(problems)
    spec = policy_rules.normalize(spec)
    policy = BackupPolicy.objects.select_for_update().filter(machine=machine).first()
    if policy is None:
        policy = BackupPolicy(machine=machine, scheduled_through=now, version=0)
    new_hash = policy_rules.spec_hash(spec)
    if new_hash == policy.spec_hash and policy.pk:
        return policy
    policy.set_spec(spec)
    policy.version += 1
    policy.updated_by = user
    policy.save()
    _send_to_machine(
        machine,
        protocol.POLICY_TASK,
        policy=spec,
        version=policy.version,
        spec_hash=policy.spec_hash,
    )
    return policy


def policy_applied(*, policy: BackupPolicy, version: int, spec_hash: str, error: str = "") -> None:
    """The agent reports which policy it applied (or why it could not)."""
    fields = {"applied_at": timezone.now(), "apply_error": error[:2000]}
    if not error:
        fields.update(applied_version=version, applied_hash=spec_hash)
    BackupPolicy.objects.filter(pk=policy.pk).update(**fields)


def policy_drift(policy: BackupPolicy | None, *, now: datetime | None = None) -> str | None:
    """Why the machine runs something other than the authored policy, or None."""
    if policy is None or not policy.drifted:
        return None
    if policy.apply_error:
        return f"The agent could not apply version {policy.version}: {policy.apply_error}"
    applied = f"version {policy.applied_version}" if policy.applied_version else "no policy yet"
    if not machine_is_online(policy.machine, now):
        return (
            f"The machine is offline; it runs {applied} and will pick up version "
            f"{policy.version} when its agent is back."
        )
    return f"The agent runs {applied}; version {policy.version} was sent and is not confirmed yet."


# --- retention of one point -------------------------------------------------------------
def _inheritable_run(policy: BackupPolicy, before: datetime) -> ScheduledRun | None:
    """The failed scheduled run whose long-term tags the next ad hoc backup takes, if any."""
    run = (
        ScheduledRun.objects.filter(policy=policy, scheduled_for__lte=before)
        .select_related("job")
        .order_by("-scheduled_for")
        .first()
    )
    if run is None or not run.long_term_tags:
        return None
    failed = run.job is None or run.job.status in (Job.Status.FAILED, Job.Status.CANCELLED)
    if not failed:
        return None
    taken = RecoveryPoint.objects.filter(
        machine_id=policy.machine_id, inherited_from=run.scheduled_for
    ).exists()
    return None if taken else run


def adhoc_retention(*, machine, retain_until: date | None = None, now: datetime | None = None):
    """What an ad hoc backup started now would get: (Tagging, inherited run or None)."""
    now = now or timezone.now()
    policy = BackupPolicy.objects.filter(machine=machine).first()
    spec = policy.spec() if policy else policy_rules.default_spec()
    run = _inheritable_run(policy, now) if policy else None
    tagging = retention.tag_point(
        spec,
        zone(machine.time_zone),
        adhoc=True,
        tagged_for=now,
        inherited_from=run.scheduled_for if run else None,
        retain_until=retain_until,
    )
    return tagging, run


def retention_sentence(tagging: retention.Tagging, tz_name: str) -> str:
    tz = zone(tz_name)
    parts = [
        f"{tag} until {moment.astimezone(tz):%d %b %Y %H:%M}"
        for tag, moment in sorted(tagging.until.items(), key=lambda kv: kv[1])
    ]
    return "Kept as " + "; ".join(parts) + "." if parts else "Not kept beyond the next backup."


# --- jobs -------------------------------------------------------------------------------
def backup_start(
    *,
    machine,
    user=None,
    retain_until: date | None = None,
    trigger: str = Job.Trigger.ADHOC,
    scheduled_for: datetime | None = None,
    now: datetime | None = None,
) -> Job:
    """Queue a backup of ``machine`` and send it to its agent; one per machine at a time."""
    now = now or timezone.now()
    if retain_until is not None and retain_until < now.astimezone(zone(machine.time_zone)).date():
        raise ValidationError({"retain_until": ["Choose today or a later date."]})
    running = Job.objects.active().filter(machine=machine, operation=Job.Operation.BACKUP).first()
    if running is not None:
        raise BackupAlreadyRunning(running)
    status = Job.Status.QUEUED if machine_is_online(machine, now) else Job.Status.WAITING
    try:
        with transaction.atomic():
            job = Job.objects.create(
                vault_id=machine.vault_id,
                machine=machine,
                operation=Job.Operation.BACKUP,
                status=status,
                trigger=trigger,
                scheduled_for=scheduled_for,
                retain_until=retain_until,
                created_by=user,
            )
    except IntegrityError:
        running = Job.objects.active().filter(machine=machine, operation=Job.Operation.BACKUP)
        raise BackupAlreadyRunning(running.first()) from None
    _send_to_machine(machine, protocol.BACKUP_TASK, job_id=str(job.pk))
    job_publish(job)
    return job


def _clean_progress(event: dict) -> dict:
    progress = {}
    for key in protocol.PROGRESS_KEYS:
        value = event.get(key)
        if key in ("phase", "current"):
            progress[key] = str(value)[:500] if value is not None else None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            progress[key] = max(value, 0)
        else:
            progress[key] = None
    return progress


def job_mark_started(*, job: Job, now: datetime | None = None) -> Job:
    if _mark_running(job, now or timezone.now()):
        job_publish(job)
    return job


def _mark_running(job: Job, now: datetime) -> bool:
    """A queued or waiting job becomes running; returns whether it changed."""
    if job.status not in (Job.Status.QUEUED, Job.Status.WAITING):
        return False
    job.status = Job.Status.RUNNING
    job.started_at = now
    job.last_report_at = now
    job.save(update_fields=["status", "started_at", "last_report_at"])
    return True


def job_record_progress(*, job: Job, event: dict, now: datetime | None = None) -> bool:
    """Store the latest progress and push it; returns whether the agent should stop."""
    now = now or timezone.now()
    if job.status not in Job.ACTIVE:
        return True
    if job.status != Job.Status.RUNNING:
        # A report before (or without) a start report starts the job: the one push below
        # shows both.
        _mark_running(job, now)
    job.progress = _clean_progress(event)
    job.bytes_transferred = int(job.progress.get("stored_bytes") or 0)
    job.last_report_at = now
    Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
        progress=job.progress, bytes_transferred=job.bytes_transferred, last_report_at=now
    )
    job_publish(job)
    return job.cancel_requested_at is not None


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


@transaction.atomic
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
    now: datetime | None = None,
) -> Job:
    """The agent's final word on a job: status, warnings, and the recovery point it made."""
    now = now or timezone.now()
    job = (
        Job.objects.select_for_update(of=("self",))
        .select_related("machine", "vault", "created_by")
        .get(pk=job.pk)
    )
    if job.status in Job.FINISHED and status not in (Job.Status.COMPLETED, Job.Status.WARNING):
        # The portal ended the job already (the sweep failed it while the agent was silent,
        # then the agent came back and was told to stop): keep the portal's reason. A late
        # success is still recorded below, as its recovery point is real.
        return job
    stats = stats or {}
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
    point = None
    if status in (Job.Status.COMPLETED, Job.Status.WARNING) and snapshot_id:
        point = _recovery_point_create(
            job=job,
            snapshot_id=snapshot_id,
            manifest_blob=manifest_blob,
            stats=stats,
            pack_ids=list(pack_ids),
            now=now,
        )
    _alerts_after_job(job, now=now)
    _notify_finished(job)
    job_publish(job)
    if point is not None:
        _enqueue("retention_apply_machine", str(job.machine_id))
    return job


def _recovery_point_create(*, job, snapshot_id, manifest_blob, stats, pack_ids, now):
    machine = job.machine
    policy = BackupPolicy.objects.filter(machine=machine).first()
    spec = policy.spec() if policy else policy_rules.default_spec()
    adhoc = job.trigger == Job.Trigger.ADHOC
    run = _inheritable_run(policy, job.created_at) if (policy and adhoc) else None
    tagged_for = job.scheduled_for if (not adhoc and job.scheduled_for) else job.created_at
    tagging = retention.tag_point(
        spec,
        zone(machine.time_zone),
        adhoc=adhoc,
        tagged_for=tagged_for,
        inherited_from=run.scheduled_for if run else None,
        retain_until=job.retain_until,
    )
    point, _ = RecoveryPoint.objects.update_or_create(
        vault_id=job.vault_id,
        snapshot_id=snapshot_id,
        defaults={
            "machine": machine,
            "job": job,
            "manifest_blob": manifest_blob or layout.manifest_blob(snapshot_id),
            "created_at": now,
            "kind": RecoveryPoint.Kind.ADHOC if adhoc else RecoveryPoint.Kind.SCHEDULED,
            "tagged_for": tagged_for,
            "inherited_from": run.scheduled_for if run else None,
            "retain_until": job.retain_until,
            "logical_bytes": int(stats.get("logical_bytes") or 0),
            "new_bytes": int(stats.get("new_bytes") or 0),
            # What this point added to storage: summed over kept points, the storage used.
            "stored_bytes": int(stats.get("added_bytes") or stats.get("stored_bytes") or 0),
            "file_count": int(stats.get("files") or 0),
            "retention_tags": list(tagging.tags),
            "expires_at": tagging.expires_at,
            "pack_ids": sorted({str(p) for p in pack_ids}),
        },
    )
    return point


def job_fail(*, job: Job, reason: str, now: datetime | None = None) -> Job:
    """Fail an unfinished job from the portal side (agent offline, agent gone quiet)."""
    now = now or timezone.now()
    updated = Job.objects.filter(pk=job.pk, status__in=Job.ACTIVE).update(
        status=Job.Status.FAILED, error=reason, ended_at=now
    )
    if not updated:
        return job
    job.refresh_from_db(from_queryset=Job.objects.select_related("machine", "vault", "created_by"))
    _alerts_after_job(job, now=now)
    _notify_finished(job)
    job_publish(job)
    return job


def job_cancel(*, job: Job, user=None, now: datetime | None = None) -> Job:
    """Cancel: a job the agent has not started ends at once; a running one is asked to stop
    (the answer to its next progress report says so) and ends when the agent confirms."""
    now = now or timezone.now()
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
            _send_to_machine(job.machine, protocol.CANCEL_TASK, job_id=str(job.pk))
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
    for job in Job.objects.filter(
        status=Job.Status.WAITING, created_at__lte=deadline
    ).select_related("machine"):
        name = job.machine.name if job.machine else "the machine"
        again = (
            "press Back up now again"
            if job.operation == Job.Operation.BACKUP
            else "start the recovery again (Recover Data)"
        )
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
    for job in Job.objects.filter(
        status=Job.Status.RUNNING, last_report_at__lte=stall
    ).select_related("machine"):
        name = job.machine.name if job.machine else "the machine"
        if job.cancel_requested_at is not None:
            if Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
                status=Job.Status.CANCELLED,
                ended_at=now,
                error="Cancelled; the agent stopped before confirming.",
            ):
                job.refresh_from_db()
                _notify_finished(job)
                job_publish(job)
            continue
        seconds = settings.HAVEN_JOB_STALL_SECONDS
        job_fail(job=job, reason=_stall_reason(job, name, seconds), now=now)
        counts["failed"] += 1
    return counts


def _stall_reason(job: Job, name: str, seconds: int) -> str:
    lost = (
        f"The agent on {name} stopped reporting for more than {seconds} seconds, so the "
        f"{job.get_operation_display().lower()} was abandoned: the agent was stopped or the "
        "machine lost its connection. "
    )
    if job.operation == Job.Operation.BACKUP:
        return lost + (
            "No recovery point was made; the data uploaded so far is reused by the next "
            "backup. Check the agent on the machine (haven-agent status) and back up again."
        )
    return lost + (
        "Files it finished are complete; the one being written may be missing. Check the "
        "agent on the machine (haven-agent status) and start the recovery again."
    )


# --- scheduler --------------------------------------------------------------------------
def schedule_tick(*, now: datetime | None = None) -> list[Job]:
    """Start the backups due since the last tick, once each. Runs once a minute (beat).

    For each policy, the scheduled times in ``(scheduled_through, now]`` are computed in the
    machine's zone; only the latest one runs (missed ticks are caught up once), recorded
    under the unique (policy, scheduled_for) constraint so a duplicate tick does nothing.
    """
    now = now or timezone.now()
    started = []
    policies = BackupPolicy.objects.select_related("machine", "machine__vault").filter(
        machine__unregistered_at__isnull=True
    )
    for policy in policies:
        after = policy.scheduled_through or now
        if after >= now:
            continue
        tz = zone(policy.machine.time_zone)
        due = occurrences(Schedule.from_spec(policy.spec()), tz, after, now)
        if due:
            job = _scheduled_run(policy, due[-1], tz, now=now)
            if job is not None:
                started.append(job)
        BackupPolicy.objects.filter(
            pk=policy.pk, scheduled_through=policy.scheduled_through
        ).update(scheduled_through=now)
    return started


def _scheduled_run(policy: BackupPolicy, when: datetime, tz, *, now: datetime) -> Job | None:
    tags = sorted(retention.long_term_tags(policy.retention, when.astimezone(tz)))
    try:
        with transaction.atomic():
            run = ScheduledRun.objects.create(
                policy=policy, scheduled_for=when, long_term_tags=tags
            )
    except IntegrityError:
        return None  # another tick got here first
    machine = policy.machine
    try:
        with transaction.atomic():
            job = backup_start(
                machine=machine, trigger=Job.Trigger.SCHEDULED, scheduled_for=when, now=now
            )
    except BackupAlreadyRunning as exc:
        # Recorded as a failed scheduled backup, so the next ad hoc backup takes its place.
        job = Job.objects.create(
            vault_id=machine.vault_id,
            machine=machine,
            operation=Job.Operation.BACKUP,
            status=Job.Status.FAILED,
            trigger=Job.Trigger.SCHEDULED,
            scheduled_for=when,
            started_at=now,
            ended_at=now,
            error=(
                "Skipped: the previous backup of this machine was still running at the "
                f"scheduled time (job {exc.job.pk}). If this keeps happening, schedule "
                "backups further apart or exclude large, changing files."
            ),
        )
        job_publish(job)
    run.job = job
    run.save(update_fields=["job"])
    return job


# --- retention and garbage collection ---------------------------------------------------
def _repository_store(machine):
    """The machine's repository: each machine keeps it in a container of its own
    (``Machine.container``), opened here with the account key, which may delete."""
    from vaults.storage import primary_account

    return primary_account().store(machine.container)


def retention_apply(*, machine, now: datetime | None = None, store=None) -> list[RecoveryPoint]:
    """Re-tag the machine's points under its current policy, remove the expired ones (never
    the latest), delete their manifests, then collect the machine's unreferenced packs."""
    now = now or timezone.now()
    policy = BackupPolicy.objects.filter(machine=machine).first()
    spec = policy.spec() if policy else None
    tz = zone(machine.time_zone)
    points = list(RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True))
    for point in points:
        if spec is None:
            continue
        tagging = retention.tag_point(
            spec,
            tz,
            adhoc=point.kind == RecoveryPoint.Kind.ADHOC,
            tagged_for=point.tagged_for,
            inherited_from=point.inherited_from,
            retain_until=point.retain_until,
        )
        if list(tagging.tags) != point.retention_tags or tagging.expires_at != point.expires_at:
            point.retention_tags = list(tagging.tags)
            point.expires_at = tagging.expires_at
            point.save(update_fields=["retention_tags", "expires_at"])
    doomed = retention.expired(
        [retention.Point(p.pk, p.created_at, p.expires_at) for p in points], now
    )
    removed = [p for p in points if p.pk in doomed]
    if not removed:
        return []
    store = store if store is not None else _repository_store(machine)
    for point in removed:
        try:
            store.delete(point.manifest_blob)
        except BlobNotFound:
            pass  # already gone, which is what we want
        except StorageError as exc:
            log.warning("could not delete %s: %s", point.manifest_blob, exc)
            continue
        RecoveryPoint.objects.filter(pk=point.pk).update(removed_at=now)
    packs_collect(machine=machine, now=now, store=store)
    return removed


def packs_collect(*, machine, now: datetime | None = None, store=None) -> list[str]:
    """Delete the machine's packs that none of its kept recovery points references, once
    older than the grace period."""
    now = now or timezone.now()
    store = store if store is not None else _repository_store(machine)
    referenced: set[str] = set()
    for pack_ids in RecoveryPoint.objects.filter(
        machine=machine, removed_at__isnull=True
    ).values_list("pack_ids", flat=True):
        referenced.update(pack_ids)
    grace = now - timedelta(hours=settings.HAVEN_GC_GRACE_HOURS)
    deleted = []
    for blob in list(store.list(layout.DATA_PREFIX)):
        pack_id = layout.pack_id_of(blob.name)
        if pack_id in referenced or blob.modified > grace:
            continue
        try:
            store.delete(blob.name)
        except StorageError as exc:
            log.warning("could not delete pack %s: %s", blob.name, exc)
            continue
        deleted.append(blob.name)
    if deleted:
        log.info("machine %s: deleted %d unreferenced packs", machine.pk, len(deleted))
    return deleted


def retention_apply_all(*, now: datetime | None = None) -> int:
    """Daily: apply retention to every machine with recovery points."""
    from agents.models import Machine

    count = 0
    machine_ids = (
        RecoveryPoint.objects.filter(removed_at__isnull=True)
        .values_list("machine_id", flat=True)
        .distinct()
    )
    for machine in Machine.objects.filter(pk__in=list(machine_ids)).select_related("vault"):
        try:
            count += len(retention_apply(machine=machine, now=now))
        except Exception:
            log.exception("retention failed for machine %s", machine.pk)
    return count


# --- alerts -----------------------------------------------------------------------------
def alert_raise(
    *, vault, machine=None, job=None, kind: str, severity: str, message: str, now=None
) -> Alert:
    now = now or timezone.now()
    alert = Alert.objects.filter(machine=machine, kind=kind, resolved_at__isnull=True).first()
    if alert is None:
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    vault=vault,
                    machine=machine,
                    job=job,
                    kind=kind,
                    severity=severity,
                    message=message,
                )
        except IntegrityError:
            alert = Alert.objects.get(machine=machine, kind=kind, resolved_at__isnull=True)
        else:
            if settings.HAVEN_ALERT_EMAIL == "each":
                alert_id = alert.pk
                transaction.on_commit(lambda: alert_email_send(alert_ids=[alert_id]))
            _publish_alerts(vault)
            return alert
    Alert.objects.filter(pk=alert.pk).update(
        occurrences=alert.occurrences + 1, last_raised_at=now, message=message, job=job
    )
    _publish_alerts(vault)
    return alert


def alerts_resolve(*, machine, kinds: Iterable[str], now=None) -> int:
    now = now or timezone.now()
    count = Alert.objects.filter(
        machine=machine, kind__in=list(kinds), resolved_at__isnull=True
    ).update(resolved_at=now)
    if count:
        _publish_alerts(machine.vault)
    return count


def _alerts_after_job(job: Job, *, now) -> None:
    if job.machine is None:
        return
    name = job.machine.name
    if job.operation == Job.Operation.BACKUP:
        if job.status == Job.Status.FAILED:
            alert_raise(
                vault=job.vault,
                machine=job.machine,
                job=job,
                kind=Alert.Kind.BACKUP_FAILED,
                severity=Alert.Severity.CRITICAL,
                message=f"Backup of {name} failed: {job.error or 'no reason given'}",
                now=now,
            )
        elif job.status == Job.Status.WARNING:
            alerts_resolve(
                machine=job.machine,
                kinds=[Alert.Kind.BACKUP_FAILED, Alert.Kind.NO_RECENT_BACKUP],
                now=now,
            )
            alert_raise(
                vault=job.vault,
                machine=job.machine,
                job=job,
                kind=Alert.Kind.BACKUP_WARNINGS,
                severity=Alert.Severity.WARNING,
                message=(
                    f"Backup of {name} completed with {job.warning_count} warning"
                    f"{'s' if job.warning_count != 1 else ''}: some files were skipped."
                ),
                now=now,
            )
        elif job.status == Job.Status.COMPLETED:
            alerts_resolve(
                machine=job.machine,
                kinds=[
                    Alert.Kind.BACKUP_FAILED,
                    Alert.Kind.BACKUP_WARNINGS,
                    Alert.Kind.NO_RECENT_BACKUP,
                ],
                now=now,
            )
    elif job.operation == Job.Operation.RESTORE:
        if job.status == Job.Status.FAILED:
            alert_raise(
                vault=job.vault,
                machine=job.machine,
                job=job,
                kind=Alert.Kind.RESTORE_FAILED,
                severity=Alert.Severity.CRITICAL,
                message=f"Restore on {name} failed: {job.error or 'no reason given'}",
                now=now,
            )
        elif job.status in (Job.Status.COMPLETED, Job.Status.WARNING):
            alerts_resolve(machine=job.machine, kinds=[Alert.Kind.RESTORE_FAILED], now=now)


def alerts_check_stale(*, now: datetime | None = None) -> int:
    """Warn about machines with a policy but no successful backup for N days.

    A fixed number of queries however many policies: one finds the stale machines, one
    their open alerts, one counts those again, one creates the rest, and one counts the
    alerts of the vaults concerned, whose summaries are pushed once each.
    """
    now = now or timezone.now()
    days = settings.HAVEN_ALERT_NO_BACKUP_DAYS
    since = now - timedelta(days=days)
    backed_up = Job.objects.filter(
        machine_id=OuterRef("machine_id"),
        operation=Job.Operation.BACKUP,
        status__in=(Job.Status.COMPLETED, Job.Status.WARNING),
        ended_at__gte=since,
    )
    policies = BackupPolicy.objects.select_related("machine", "machine__vault").filter(
        ~Exists(backed_up), machine__unregistered_at__isnull=True
    )
    stale = [
        policy.machine
        for policy in policies
        # Newer than N days: too new to judge.
        if min(policy.scheduled_through or now, policy.machine.registered_at or now) <= since
    ]
    if not stale:
        return 0
    try:
        with transaction.atomic():
            _raise_no_recent_backup(stale, days=days, now=now)
    except IntegrityError:
        # A concurrent check raised some of these first: one at a time, as alert_raise
        # counts an alert that is already open.
        for machine in stale:
            alert_raise(
                vault=machine.vault,
                machine=machine,
                kind=Alert.Kind.NO_RECENT_BACKUP,
                severity=Alert.Severity.WARNING,
                message=_no_recent_backup_message(machine, days),
                now=now,
            )
    return len(stale)


def _no_recent_backup_message(machine, days: int) -> str:
    return f"{machine.name} has had no successful backup for {days} days."


def _raise_no_recent_backup(machines: list, *, days: int, now: datetime) -> None:
    """alert_raise for many machines at once: count open alerts again, create the rest."""
    from jobs import selectors

    kind = Alert.Kind.NO_RECENT_BACKUP
    open_alerts = {
        alert.machine_id: alert
        for alert in Alert.objects.filter(machine__in=machines, kind=kind, resolved_at__isnull=True)
    }
    again, new = [], []
    for machine in machines:
        message = _no_recent_backup_message(machine, days)
        alert = open_alerts.get(machine.pk)
        if alert is None:
            new.append(
                Alert(
                    vault=machine.vault,
                    machine=machine,
                    kind=kind,
                    severity=Alert.Severity.WARNING,
                    message=message,
                )
            )
            continue
        alert.occurrences += 1
        alert.last_raised_at = now
        alert.message = message
        alert.job = None
        again.append(alert)
    if again:
        Alert.objects.bulk_update(again, ["occurrences", "last_raised_at", "message", "job"])
    if new:
        created = Alert.objects.bulk_create(new)
        if settings.HAVEN_ALERT_EMAIL == "each":
            alert_ids = [alert.pk for alert in created]
            transaction.on_commit(lambda: alert_email_send(alert_ids=alert_ids))
    vaults = {machine.vault_id: machine.vault for machine in machines}
    counts = selectors.alert_counts_by_vault(list(vaults))
    for vault_id, vault in vaults.items():
        _publish_alerts(vault, counts=counts[vault_id])


def _alert_recipients(vault) -> list[str]:
    from portal.models import Membership, Role

    return sorted(
        {
            email
            for email in Membership.objects.filter(
                subscription_id=vault.subscription_id,
                role__in=[Role.OWNER, Role.CONTRIBUTOR, Role.BACKUP_OPERATOR],
            ).values_list("user__email", flat=True)
            if email
        }
    )


def alert_email_send(*, alert_ids: list[int]) -> int:
    """One email per alert to the vault's Owners, Contributors and Backup Operators."""
    from django.core.mail import send_mail

    sent = 0
    for alert in Alert.objects.filter(pk__in=alert_ids, notified_at__isnull=True).select_related(
        "vault", "machine"
    ):
        recipients = _alert_recipients(alert.vault)
        if recipients:
            send_mail(
                subject=f"[Haven] {alert.get_severity_display()}: {alert.get_kind_display()} "
                f"on {alert.machine or alert.vault}",
                message=_alert_text(alert, settings.HAVEN_PUBLIC_URL),
                from_email=None,
                recipient_list=recipients,
            )
            sent += 1
        Alert.objects.filter(pk=alert.pk).update(notified_at=timezone.now())
    return sent


def alerts_send_digest(*, now: datetime | None = None) -> int:
    """Hourly: one email per recipient listing the alerts raised since the last digest."""
    from django.core.mail import send_mail

    if settings.HAVEN_ALERT_EMAIL != "digest":
        return 0
    pending = list(
        Alert.objects.filter(notified_at__isnull=True).select_related("vault", "machine")
    )
    by_recipient: dict[str, list[Alert]] = {}
    for alert in pending:
        for email in _alert_recipients(alert.vault):
            by_recipient.setdefault(email, []).append(alert)
    for email, alerts in by_recipient.items():
        body = "\n\n".join(_alert_text(a, settings.HAVEN_PUBLIC_URL) for a in alerts)
        send_mail(
            subject=f"[Haven] {len(alerts)} backup alert{'s' if len(alerts) != 1 else ''}",
            message=body,
            from_email=None,
            recipient_list=[email],
        )
    Alert.objects.filter(pk__in=[a.pk for a in pending]).update(notified_at=now or timezone.now())
    return len(by_recipient)


def _alert_text(alert: Alert, base_url: str) -> str:
    link = base_url + reverse("jobs:vault_alerts", args=[alert.vault_id])
    return (
        f"{alert.get_severity_display()} — {alert.get_kind_display()}\n"
        f"Vault: {alert.vault}\nMachine: {alert.machine or '—'}\n"
        f"{alert.message}\n\nBackup Alerts: {link}"
    )


# --- live updates and notifications -----------------------------------------------------
def job_publish(job: Job) -> None:
    """Push the job's fragments to its page and to its vault's pages, after commit."""
    from portal import realtime

    context = {"job": job, "oob": True}
    realtime.publish(job_group(job.pk), render_to_string("jobs/_job_live.html", context))
    realtime.publish(vault_group(job.vault_id), render_to_string("jobs/_job_row.html", context))


def _publish_alerts(vault, *, counts: dict | None = None) -> None:
    from jobs import selectors
    from portal import realtime

    if counts is None:
        counts = selectors.alert_counts(vault)
    html = render_to_string(
        "jobs/_alert_summary.html", {"vault": vault, "alert_counts": counts, "oob": True}
    )
    realtime.publish(vault_group(vault.pk), html)


def _notify_finished(job: Job) -> None:
    if job.created_by is None:
        return
    from portal.models import Notification
    from portal.services import notification_publish

    level = {
        Job.Status.COMPLETED: Notification.Level.SUCCESS,
        Job.Status.WARNING: Notification.Level.WARNING,
        Job.Status.FAILED: Notification.Level.ERROR,
    }.get(job.status, Notification.Level.INFO)
    what = f"{job.get_operation_display()} of {job.machine or job.vault}"
    if job.operation == Job.Operation.RESTORE:
        # The job runs on the target machine; the data may be another machine's.
        details = job.details or {}
        source = details.get("source_name") or str(job.machine)
        if details.get("kind") == "download":
            what = f"Download of files of {source}"
        elif source != str(job.machine):
            what = f"Restore of {source} onto {job.machine}"
        else:
            what = f"Restore on {job.machine}"
    notification_publish(
        user=job.created_by,
        title=f"{what}: {job.get_status_display()}",
        body=job.error[:300] if job.error else "",
        level=level,
        link_url=reverse("jobs:detail", args=[job.pk]),
        link_label="View job",
        key=f"job:{job.pk}",
    )
