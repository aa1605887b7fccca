"""Live updates and notifications: a job's fragments pushed to its page and its vault's
pages, a vault's alert summary, and the bell notification when a job ends. Every push
leaves after commit (``portal.realtime.publish``); the page shows the same on reload.
"""

from __future__ import annotations

from django.template.loader import render_to_string
from django.urls import reverse

from jobs import selectors
from jobs.models import Job
from portal import realtime
from portal.models import Notification
from portal.services import notification_publish
from vaults.services import group_for_vault


def job_group(job_id) -> str:
    return f"job.{job_id}"


def job_publish(job: Job) -> None:
    """Push the job's fragments to its page and to its vault's pages, after commit."""
    context = {"job": job, "oob": True}
    realtime.publish(job_group(job.pk), render_to_string("jobs/_job_live.html", context))
    realtime.publish(group_for_vault(job.vault_id), render_to_string("jobs/_job_row.html", context))


def alerts_publish(*, vault, counts: dict | None = None) -> None:
    if counts is None:
        counts = selectors.alert_counts(vault)
    html = render_to_string(
        "jobs/_alert_summary.html", {"vault": vault, "alert_counts": counts, "oob": True}
    )
    realtime.publish(group_for_vault(vault.pk), html)


def job_notify_finished(*, job: Job) -> None:
    if job.created_by is None:
        return
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
