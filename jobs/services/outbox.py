"""Jobs whose agent message the broker did not take (``agents.dispatch``'s outbox): the job
page follows the message, and a job whose message expired unsent fails with the reason."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from jobs.models import Job

NOT_STARTED = (Job.Status.QUEUED, Job.Status.WAITING)


def broker_failure_reason(job: Job, message, *, now: datetime | None = None) -> str:
    """Why a job whose message never left the portal failed, in words a person can act on."""
    now = now or timezone.now()
    minutes = max(1, round((now - message.created_at).total_seconds() / 60))
    name = job.machine.name if job.machine else "the machine"
    again = {
        Job.Operation.BACKUP: "start the backup again (Back up now)",
        Job.Operation.SEED_EXPORT: "start the offline backup again (Back up now)",
        Job.Operation.DRILL: "run the restore drill again (Run restore drill)",
    }.get(job.operation, "start the recovery again (Recover Data)")
    last = f" The broker's last answer: {message.last_error}." if message.last_error else ""
    return (
        f"The portal could not reach the message broker for {minutes} minute"
        f"{'s' if minutes != 1 else ''}, so this job never reached the agent on {name} "
        f"({message.attempts} tr{'ies' if message.attempts != 1 else 'y'}).{last} Check that "
        f"Redis (REDIS_URL) is running and reachable from the portal; then {again}."
    )


def job_message_changed(message) -> None:
    """The broker refused the job's message for the first time, or took it after
    refusing: the job's pages show it (``jobs.selectors.broker_wait``)."""
    from jobs.services.live import job_publish

    if message.job_id is None:
        return
    job = Job.objects.select_related("machine", "vault", "created_by").filter(
        pk=message.job_id, status__in=NOT_STARTED
    )
    for found in job:
        job_publish(found)


def job_message_undeliverable(message) -> None:
    """The job's message expired unsent: the job fails, saying the broker was away."""
    from jobs.services.jobs import job_fail

    if message.job_id is None:
        return
    job = (
        Job.objects.select_related("machine")
        .filter(pk=message.job_id, status__in=NOT_STARTED)
        .first()
    )
    if job is not None:
        job_fail(job=job, reason=broker_failure_reason(job, message))
