"""Verify jobs (docs/verify.md): the agent reads back and authenticates a machine's packs and
manifests; the portal starts the job (Verify now, or weekly from the policy, one slice of
the packs at a time), checks the agent's damage report, marks the recovery points it names
Damaged and raises the alert.

The weekly rotation: a policy's ``verify_weeks`` (N) splits the packs into N slices
(``agents.runtime.engine.verify.in_slice``); each scheduled verify reads the slice
``verify_slice`` and, once it has read it, the next run reads the next one, so every pack
is read once every N weeks. A run that did not read its slice (the agent was away) leaves
the slice where it was.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.runtime import protocol
from jobs import services  # the package, for its seams
from jobs.models import BackupPolicy, Job, RecoveryPoint
from jobs.services.live import job_publish
from jobs.services.pruning import repository_fence
from vaults import activity
from vaults.activity import Operation

log = logging.getLogger(__name__)

VERIFY_EVERY = timedelta(days=7)
MIN_WEEKS, MAX_WEEKS = 1, protocol.MAX_VERIFY_SLICES
# Paths kept per damaged point for its badge and the wizard's warning.
FILES_KEPT = 20


class VerifyRefused(Exception):
    """A verify cannot start; the message says why (``status``: the HTTP answer)."""

    def __init__(self, message: str, *, status: int = 409):
        super().__init__(message)
        self.message = message
        self.status = status


class VerifyReportRefused(Exception):
    """A verify result the portal will not record (it names another machine's recovery
    points, or counts that cannot be); ``status`` is the HTTP answer to the agent."""

    def __init__(self, message: str, *, status: int = 422):
        super().__init__(message)
        self.message = message
        self.status = status


def stored_data_refusal(machine, *, work: str) -> str:
    """Why ``work`` ("verify", "compact": operations on the machine's stored backup data,
    run by its agent) cannot start on ``machine`` now ("" when it can). Verify now and
    Compact now follow this one rule, so their buttons are enabled together."""
    if machine.unregistered_at is not None:
        return (
            f"{machine.name} is unregistered: no agent is left to read its data. Its "
            "recovery points stay restorable through Recover Data."
        )
    policy = BackupPolicy.objects.filter(machine=machine).only("protection").first()
    if policy is not None and policy.protection in (
        BackupPolicy.Protection.SOFT_DELETED,
        BackupPolicy.Protection.DELETED,
    ):
        return f"The backup data of {machine.name} is deleted; there is nothing to {work}."
    if not RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True).exists():
        return f"{machine.name} has no recovery point yet; there is nothing to {work}."
    return ""


def stored_data_job_running(machine, operation: str) -> Job | None:
    """The job of ``operation`` on ``machine``'s stored data on its way, if any (at most one:
    its start looks for it under the machine's fence)."""
    return Job.objects.active().filter(machine=machine, operation=operation).first()


def stored_data_job_create(machine, operation: str, *, now: datetime, **fields) -> Job:
    """A job of ``operation`` on ``machine``'s stored data: Queued for an agent online at
    ``now``, else Waiting for it (made under the caller's fence, after its checks)."""
    return Job.objects.create(
        vault_id=machine.vault_id,
        machine=machine,
        operation=operation,
        status=Job.Status.QUEUED if machine.is_online(now) else Job.Status.WAITING,
        **fields,
    )


def stored_data_job_refusal(machine, *, operation: str, work: str, noun: str) -> str:
    """Why a job of ``operation`` on ``machine``'s stored data cannot start now ("" when it
    can): ``stored_data_refusal``, or one already on its way (``noun``: "A verify")."""
    refusal = stored_data_refusal(machine, work=work)
    if refusal:
        return refusal
    running = stored_data_job_running(machine, operation)
    if running is not None:
        return f"{noun} of {machine.name} is already {running.get_status_display().lower()}."
    return ""


def verify_refusal(machine) -> str:
    """Why ``machine`` cannot be verified now ("" when it can): the rule Compact now shares
    (``stored_data_refusal``), or a verify already on its way."""
    return stored_data_job_refusal(
        machine, operation=Job.Operation.VERIFY, work="verify", noun="A verify"
    )


def verify_start(
    *,
    machine,
    user=None,
    trigger: str = Job.Trigger.ADHOC,
    slices: int = 1,
    slice_no: int = 0,
    scheduled_for: datetime | None = None,
    now: datetime | None = None,
) -> Job:
    """Queue a verify of ``machine`` (slice ``slice_no`` of ``slices``; 1: every pack) and
    send it to its agent; ``VerifyRefused`` says why not. The refusal is read and the job
    made under the machine's fence, so two presses at once queue one verify."""
    now = now or timezone.now()
    with repository_fence(machine.pk):
        refusal = verify_refusal(machine)
        if refusal:
            raise VerifyRefused(refusal)
        job = stored_data_job_create(
            machine,
            Job.Operation.VERIFY,
            now=now,
            trigger=trigger,
            scheduled_for=scheduled_for,
            created_by=user,
            details={"slices": slices, "slice": slice_no},
        )
    if trigger == Job.Trigger.ADHOC:
        activity.record(
            operation=Operation.VERIFY_NOW,
            user=user,
            vault=machine.vault,
            resource=machine,
            detail={"job": str(job.pk)},
        )
    services._send_to_machine(machine, protocol.VERIFY_TASK, job_id=str(job.pk))
    job_publish(job)
    return job


def verify_weeks_check(raw) -> tuple[int | None, str]:
    """The editor's "read all data every N weeks" field: (N, "") or (None, the problem)."""
    try:
        weeks = int(str(raw).strip())
    except ValueError:
        weeks = None
    if weeks is None or not MIN_WEEKS <= weeks <= MAX_WEEKS:
        return None, f"Enter a whole number of weeks from {MIN_WEEKS} to {MAX_WEEKS}."
    return weeks, ""


def verify_weeks_set(*, policy: BackupPolicy, weeks: int) -> None:
    """A new N starts the rotation again at slice 0 (slices of another N are other packs)."""
    if policy.verify_weeks != weeks:
        BackupPolicy.objects.filter(pk=policy.pk).update(verify_weeks=weeks, verify_slice=0)
        policy.verify_weeks, policy.verify_slice = weeks, 0


def verify_schedule_tick(*, now: datetime | None = None) -> list[Job]:
    """Start the weekly verifies that are due (called by the scheduler's tick): each reads
    its policy's next slice. A tick run twice starts nothing twice: the due time moves on
    under a compare-and-set before the job is made."""
    now = now or timezone.now()
    started = []
    policies = (
        BackupPolicy.objects.select_related("machine", "machine__vault")
        .filter(
            machine__unregistered_at__isnull=True,
            protection=BackupPolicy.Protection.PROTECTED,
            machine__recovery_points__removed_at__isnull=True,
        )
        .distinct()
    )
    for policy in policies:
        due = policy.verify_due_at
        if due is None:
            # The first one a week after the tick first sees the machine with a point: a
            # deployment does not start a verify of every machine at once.
            BackupPolicy.objects.filter(pk=policy.pk, verify_due_at=None).update(
                verify_due_at=now + VERIFY_EVERY
            )
            continue
        if due > now:
            continue
        if not BackupPolicy.objects.filter(pk=policy.pk, verify_due_at=due).update(
            verify_due_at=now + VERIFY_EVERY
        ):
            continue  # another tick took it
        weeks = max(policy.verify_weeks, 1)
        try:
            with transaction.atomic():
                job = verify_start(
                    machine=policy.machine,
                    trigger=Job.Trigger.SCHEDULED,
                    slices=weeks,
                    slice_no=policy.verify_slice % weeks,
                    scheduled_for=now,
                    now=now,
                )
        except (VerifyRefused, IntegrityError) as exc:
            log.info("scheduled verify of %s not started: %s", policy.machine, exc)
            continue
        started.append(job)
    return started


def verify_result_check(*, job: Job, status: str, damage: list[dict], stats: dict) -> str:
    """The status to record for an agent's verify result; ``VerifyReportRefused`` when the
    report names recovery points that are not this machine's or counts that cannot be.
    Damage makes the job Failed whatever status the agent sent."""
    if damage and job.operation != Job.Operation.VERIFY:
        raise VerifyReportRefused("Only a verify job reports damage.", status=400)
    if job.operation != Job.Operation.VERIFY:
        return status
    checked, total = stats.get("packs_checked", 0), stats.get("packs_total", 0)
    if checked > total:
        raise VerifyReportRefused(
            f"The report says {checked} packs were read of {total}, which cannot be.", status=400
        )
    named = {p for d in damage for p in d["recovery_points"]}
    named |= {f["recovery_point"] for d in damage for f in d["files"]}
    named.discard("")
    if named:
        own = set(
            RecoveryPoint.objects.filter(
                machine_id=job.machine_id, snapshot_id__in=named
            ).values_list("snapshot_id", flat=True)
        )
        foreign = sorted(named - own)
        if foreign:
            log.warning(
                "refused the verify report of job %s of machine %s: it names %d points "
                "that are not the machine's",
                job.pk,
                job.machine_id,
                len(foreign),
            )
            raise VerifyReportRefused(
                "The report names recovery points that are not this machine's: "
                f"{', '.join(p[:8] for p in foreign[:5])}."
            )
    return protocol.JobStatus.FAILED if damage else status


def verify_result_record(*, job: Job, damage: list[dict], stats: dict, now: datetime) -> int:
    """Mark the points ``damage`` names Damaged (they are this machine's: checked first),
    keep the findings on the job, move a scheduled run's slice on, and clear the marks when
    a verify of every pack found nothing. Returns how many points were marked."""
    details = dict(job.details or {})
    details["damage"] = damage
    Job.objects.filter(pk=job.pk).update(details=details)
    job.details = details
    read = job.status in (Job.Status.COMPLETED, Job.Status.WARNING) or bool(damage)
    _advance_slice(job, read=read)
    per_point: dict[str, dict] = {}
    for d in damage:
        points = set(d["recovery_points"]) | {f["recovery_point"] for f in d["files"]}
        for point in points - {""}:
            entry = per_point.setdefault(point, {"packs": [], "reasons": [], "files": []})
            if d["pack"] and d["pack"] not in entry["packs"]:
                entry["packs"].append(d["pack"])
            if d["reason"] not in entry["reasons"]:
                entry["reasons"].append(d["reason"])
            for f in d["files"]:
                if f["recovery_point"] == point and len(entry["files"]) < FILES_KEPT:
                    entry["files"].append(f["path"])
    for point, entry in per_point.items():
        RecoveryPoint.objects.filter(machine_id=job.machine_id, snapshot_id=point).update(
            verify_damaged_at=now, verify_damage={"job": str(job.pk), **entry}
        )
    full = job.details.get("slices", 1) == 1 and stats.get("packs_checked") == stats.get(
        "packs_total"
    )
    if not damage and full and job.status == Job.Status.COMPLETED:
        RecoveryPoint.objects.filter(
            machine_id=job.machine_id, verify_damaged_at__isnull=False
        ).update(verify_damaged_at=None, verify_damage={})
    return len(per_point)


def _advance_slice(job: Job, *, read: bool) -> None:
    if not read or job.trigger != Job.Trigger.SCHEDULED:
        return
    slices, slice_no = job.details.get("slices", 1), job.details.get("slice", 0)
    BackupPolicy.objects.filter(
        machine_id=job.machine_id, verify_weeks=slices, verify_slice=slice_no
    ).update(verify_slice=(slice_no + 1) % max(slices, 1))


def verify_summary(machine) -> dict:
    """What the machine page says about verify: N, the next run, the last verify job."""
    policy = BackupPolicy.objects.filter(machine=machine).first()
    last = machine.jobs.filter(operation=Job.Operation.VERIFY).order_by("-created_at").first()
    damaged = RecoveryPoint.objects.filter(
        machine=machine, removed_at__isnull=True, verify_damaged_at__isnull=False
    ).count()
    return {
        "weeks": policy.verify_weeks if policy else None,
        "due_at": policy.verify_due_at if policy else None,
        "last_job": last,
        "damaged_points": damaged,
        "refusal": verify_refusal(machine),
    }
