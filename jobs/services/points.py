"""A new recovery point and the retention tags it gets: what an ad hoc backup started now
would be kept as (shown on Back up now), and the point a finished backup makes. The rules
themselves are pure, in ``jobs.retention``.

A point is recorded only from the result of a backup job of the machine that holds it, and
only after ``point_check``: the portal cannot read the manifest, but it can check that the
names the agent reported are the engine's and that the blobs exist in that machine's own
container. A point once recorded never changes (its pack list decides what garbage
collection keeps), so a compromised machine cannot rewrite the history it already has.
"""

from __future__ import annotations

import contextlib
import logging
import re
from datetime import date, datetime

from django.utils import timezone

from agents.runtime.blobstore import ContainerNotFound, StorageError
from agents.runtime.engine import layout
from jobs import policy_rules, retention
from jobs.models import BackupPolicy, Job, RecoveryPoint, ScheduledRun
from jobs.schedule import zone
from jobs.services.pruning import pack_ids_present, repository_store

log = logging.getLogger(__name__)

# The engine names points and packs with 128 random bits in lower-case hex
# (docs/storage-format.md, "Blobs").
_ENGINE_ID = re.compile(r"[0-9a-f]{32}")


class PointRefused(Exception):
    """A backup result names a recovery point the portal will not record. The message says
    why, for the agent's log and the job page; ``status`` is the HTTP answer to the agent."""

    def __init__(self, message: str, *, status: int = 409):
        super().__init__(message)
        self.message = message
        self.status = status


class PointUnverifiable(Exception):
    """The machine's storage did not answer, so the point could not be checked; the agent
    delivers the result again (a 503 is retried)."""


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


def _refuse(job, message: str, *, status: int = 409) -> PointRefused:
    log.warning(
        "refused the recovery point reported by machine %s in job %s: %s",
        job.machine_id,
        job.pk,
        message,
    )
    return PointRefused(message, status=status)


def point_check(
    *, job: Job, snapshot_id: str, manifest_blob: str, pack_ids, store=None
) -> tuple[str, list[str]]:
    """The manifest blob and sorted pack ids of the point ``job``'s result reports, once the
    portal has checked it may record them; ``PointRefused`` (logged) otherwise.

    Checked: the job is a backup (or a seed's import) of a machine; the id, the manifest name and every pack id
    are the engine's names (a manifest under ``snapshots/``, never ``config``, a key or a
    pack, which retention would later delete); no other machine has a point with that id and
    no other job recorded it; the manifest and every pack exist in the machine's container
    (listed once). ``PointUnverifiable`` when that storage does not answer.
    """
    # An import (jobs.services.seeding) records the point a backup wrote to a seed disk.
    if job.operation not in (Job.Operation.BACKUP, Job.Operation.IMPORT) or job.machine_id is None:
        raise _refuse(
            job,
            f"Only a backup or seed import job makes a recovery point; this is a "
            f"{job.operation} job.",
        )
    if not _ENGINE_ID.fullmatch(snapshot_id):
        raise _refuse(job, "recovery_point_id must be 32 lower-case hex digits.", status=400)
    expected = layout.manifest_blob(snapshot_id)
    if manifest_blob and manifest_blob != expected:
        raise _refuse(
            job, f"manifest_blob must be {expected!r} for this recovery point.", status=400
        )
    packs = sorted({str(p) for p in pack_ids})
    bad = [p for p in packs if not _ENGINE_ID.fullmatch(p)]
    if bad:
        raise _refuse(
            job, f"pack ids must be 32 lower-case hex digits (got {bad[0][:80]!r}).", status=400
        )
    if (
        RecoveryPoint.objects.filter(snapshot_id=snapshot_id)
        .exclude(machine_id=job.machine_id)
        .exists()
    ):
        raise _refuse(job, "This recovery point id belongs to another machine.")
    recorded = RecoveryPoint.objects.filter(machine_id=job.machine_id, snapshot_id=snapshot_id)
    if recorded.exclude(job=job).exists():
        raise _refuse(job, "This recovery point was already recorded by another backup job.")
    if RecoveryPoint.objects.filter(job=job).exclude(snapshot_id=snapshot_id).exists():
        raise _refuse(job, "This job already recorded another recovery point.")
    if store is None and not job.machine.container:
        raise _refuse(job, "This machine has no storage container.")
    try:
        with contextlib.nullcontext(store) if store else repository_store(job.machine) as own:
            if not own.exists(expected):
                raise _refuse(job, f"{expected} does not exist in this machine's storage.")
            missing = set(packs) - pack_ids_present(own)
    except ContainerNotFound:
        raise _refuse(job, "This machine's storage container does not exist.") from None
    except StorageError as exc:
        raise PointUnverifiable(
            f"The machine's storage could not be listed to check the recovery point: {exc}"
        ) from None
    if missing:
        raise _refuse(
            job,
            f"{len(missing)} of the reported packs do not exist in this machine's storage "
            f"(for example {min(missing)}).",
        )
    return expected, packs


def recovery_point_create(*, job, snapshot_id, manifest_blob, stats, pack_ids, now):
    """Record the point of ``job``'s result (the caller ran ``point_check``); a result
    delivered twice leaves the point as it was first recorded."""
    existing = RecoveryPoint.objects.filter(
        machine_id=job.machine_id, snapshot_id=snapshot_id, job=job
    ).first()
    if existing is not None:
        return existing
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
    return RecoveryPoint.objects.create(
        machine=machine,
        vault_id=job.vault_id,
        snapshot_id=snapshot_id,
        job=job,
        manifest_blob=manifest_blob or layout.manifest_blob(snapshot_id),
        created_at=now,
        kind=RecoveryPoint.Kind.ADHOC if adhoc else RecoveryPoint.Kind.SCHEDULED,
        tagged_for=tagged_for,
        inherited_from=run.scheduled_for if run else None,
        retain_until=job.retain_until,
        logical_bytes=int(stats.get("logical_bytes") or 0),
        new_bytes=int(stats.get("new_bytes") or 0),
        # What this point added to storage: summed over kept points, the storage used.
        stored_bytes=int(stats.get("added_bytes") or stats.get("stored_bytes") or 0),
        file_count=int(stats.get("files") or 0),
        retention_tags=list(tagging.tags),
        expires_at=tagging.expires_at,
        pack_ids=sorted({str(p) for p in pack_ids}),
    )
