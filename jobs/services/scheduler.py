"""The scheduler: once a minute, start the backups each policy has due, once each, in the
machine's time zone (``jobs.schedule`` computes the times), then the restore drills that are
due (``drills.drills_schedule``).
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs import retention, selectors
from jobs.models import BackupPolicy, Job, ScheduledRun
from jobs.schedule import Schedule, occurrences, zone
from jobs.services.drills import drills_schedule
from jobs.services.jobs import BackupAlreadyRunning, ProtectionStopped, backup_start
from jobs.services.live import job_publish


def schedule_tick(*, now: datetime | None = None) -> list[Job]:
    """Start the backups due since the last tick, once each. Runs once a minute (beat).

    For each policy, the scheduled times in ``(scheduled_through, now]`` are computed in the
    machine's zone; only the latest one runs (missed ticks are caught up once), recorded
    under the unique (policy, scheduled_for) constraint so a duplicate tick does nothing.
    The policies looked at are marked scheduled through ``now`` together at the end (also
    when one of them raised), not with an UPDATE each: a tick over thousands of machines
    with nothing due writes once.
    """
    now = now or timezone.now()
    started = []
    looked_at = []
    # A machine whose protection is stopped is skipped: its policy is a stopped one.
    policies = BackupPolicy.objects.select_related("machine", "machine__vault").filter(
        machine__unregistered_at__isnull=True, protection=BackupPolicy.Protection.PROTECTED
    )
    try:
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
            looked_at.append(policy.pk)
    finally:
        _looked_at(looked_at, now=now)
    started += drills_schedule(now=now)
    return started


def _looked_at(pks: list, *, now: datetime) -> None:
    """Mark the policies ``pks`` scheduled through ``now``; a later mark (a tick that
    ended first) stays."""
    for ids in selectors.id_slices(pks):
        BackupPolicy.objects.filter(pk__in=ids, scheduled_through__lt=now).update(
            scheduled_through=now
        )


def _scheduled_run(policy: BackupPolicy, when: datetime, tz, *, now: datetime) -> Job | None:
    if selectors.seed_waiting(policy.machine) and (
        not policy.seed_staging or selectors.seed_written(policy.machine) is not None
    ):
        # No scheduled backup goes over the network before the seed's import
        # (docs/seeding.md). With a staging folder the schedule's first run writes the seed
        # there (backup_start: an offline backup to disk) once; after that the seed is on
        # its way and the schedule waits for the import, so a disk taken away for shipping
        # is not filled again (Back up now still adds to the folder on purpose).
        return None
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
    except ProtectionStopped:
        return None  # stopped since this tick read the policy
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
