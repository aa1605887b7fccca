"""A new recovery point and the retention tags it gets: what an ad hoc backup started now
would be kept as (shown on Back up now), and the point a finished backup makes. The rules
themselves are pure, in ``jobs.retention``.
"""

from __future__ import annotations

from datetime import date, datetime

from django.utils import timezone

from agents.runtime.engine import layout
from jobs import policy_rules, retention
from jobs.models import BackupPolicy, Job, RecoveryPoint, ScheduledRun
from jobs.schedule import zone


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


def recovery_point_create(*, job, snapshot_id, manifest_blob, stats, pack_ids, now):
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
