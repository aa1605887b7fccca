"""Restore drills (docs/drills.md): a Restore drill job started on demand or by the
scheduler, the policy's drill settings, the evidence the agent reports (checked here before
it is kept), and the alert for a drill that is overdue.

A drill job belongs to the machine that runs it (``Job.machine``, which may be another
machine of the vault, the policy's ``drill_machine``); the machine whose backups it proves is
``details["source_machine"]``. A drill on another machine reads the source's container
through the read-only grant of Recover Data (``jobs.recovery.services``), authorised by the
Contributor (or Owner) who chose that machine in the policy, checked again at each drill.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Max
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce
from django.utils import timezone

from agents.models import Machine
from agents.runtime import protocol
from jobs import selectors, services  # services: the package, for its seams
from jobs.models import Alert, BackupPolicy, Job, RecoveryPoint
from jobs.schedule import Schedule, previous_run, zone
from jobs.services.alerts import alert_raise, alerts_after_job
from jobs.services.live import job_publish
from jobs.services.points import PointRefused
from jobs.services.pruning import repository_fence
from portal.access import has_role
from portal.models import Role
from vaults import activity
from vaults.activity import Operation

# How long a drill may be late before it is missed (its period, then this).
DRILL_GRACE = timedelta(days=2)
DRILL_PERIODS = {
    BackupPolicy.DrillFrequency.MONTHLY: timedelta(days=30),
    BackupPolicy.DrillFrequency.WEEKLY: timedelta(days=7),
}
MAX_CAP_MB = 10 * 1024 * 1024  # 10 TB: a cap beyond any disk is a typo
# Who may choose another machine for the drills (the authorisation of its read).
DRILL_MACHINE_ROLE = Role.CONTRIBUTOR


class DrillRefused(Exception):
    """A drill that cannot start; the message says why, for the person who asked."""


class DrillAlreadyRunning(DrillRefused):
    """A drill of the machine is on its way already (a scheduled one that meets it is
    simply not needed)."""


class DrillEvidenceRefused(PointRefused):
    """A drill result whose evidence does not hold together (or names another point)."""


@dataclass
class DrillSettings:
    frequency: str = BackupPolicy.DrillFrequency.MONTHLY
    sample: str = protocol.DRILL_SAMPLE
    percent: float = protocol.DRILL_DEFAULT_PERCENT
    cap_mb: int = protocol.DRILL_DEFAULT_CAP_MB
    machine: Machine | None = None
    scratch: str = ""

    @classmethod
    def of(cls, policy: BackupPolicy | None) -> DrillSettings:
        if policy is None:
            return cls()
        return cls(
            frequency=policy.drill_frequency,
            sample=policy.drill_sample,
            percent=policy.drill_percent,
            cap_mb=policy.drill_cap_mb,
            machine=policy.drill_machine,
            scratch=policy.drill_scratch,
        )


# -- the policy's drill settings -----------------------------------------------------------------
def drill_settings_parse(post, *, machine: Machine) -> tuple[DrillSettings, dict[str, list[str]]]:
    """The editor's ``drill_*`` fields as settings, and the problems by field."""
    problems: dict[str, list[str]] = {}
    found = DrillSettings()
    frequency = post.get("drill_frequency", found.frequency)
    if frequency not in BackupPolicy.DrillFrequency.values:
        problems["drill_frequency"] = ["Choose how often a restore drill runs."]
    else:
        found.frequency = frequency
    sample = post.get("drill_sample", found.sample)
    if sample not in BackupPolicy.DrillSample.values:
        problems["drill_sample"] = ["Choose a sample or the whole recovery point."]
    else:
        found.sample = sample
    try:
        found.percent = float(post.get("drill_percent", found.percent))
        if not math.isfinite(found.percent) or not 0 < found.percent <= 100:
            raise ValueError
    except ValueError:
        problems["drill_percent"] = ["Enter a share of the files from 0.01 to 100 (percent)."]
    try:
        found.cap_mb = int(post.get("drill_cap_mb", found.cap_mb))
        if not 1 <= found.cap_mb <= MAX_CAP_MB:
            raise ValueError
    except ValueError:
        problems["drill_cap_mb"] = [f"Enter a cap from 1 to {MAX_CAP_MB} MB."]
    scratch = (post.get("drill_scratch") or "").strip()
    if scratch and (not scratch.startswith("/") or "\0" in scratch or len(scratch) > 500):
        problems["drill_scratch"] = ["Type the scratch folder as an absolute path, like /var/tmp."]
    found.scratch = scratch
    target = (post.get("drill_machine") or "").strip()
    if target and target != str(machine.pk):
        other = (
            Machine.objects.filter(
                vault_id=machine.vault_id, unregistered_at__isnull=True, pk=target
            ).first()
            if _is_uuid(target)
            else None
        )
        if other is None:
            problems["drill_machine"] = ["Choose a registered machine of this vault."]
        found.machine = other
    return found, problems


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def drill_settings_save(*, policy: BackupPolicy, found: DrillSettings, user) -> BackupPolicy:
    """Keep the drill settings; choosing another machine needs a Contributor (the view
    checked the role for the policy) and records who authorised it."""
    changed_machine = (found.machine.pk if found.machine else None) != policy.drill_machine_id
    if (
        found.machine is not None
        and changed_machine
        and not has_role(user, policy.machine.vault.subscription_id, DRILL_MACHINE_ROLE)
    ):
        raise DrillRefused("Only a Contributor or Owner may choose another machine for drills.")
    was_off = policy.drill_frequency == BackupPolicy.DrillFrequency.OFF
    policy.drill_frequency = found.frequency
    policy.drill_sample = found.sample
    policy.drill_percent = found.percent
    policy.drill_cap_mb = found.cap_mb
    policy.drill_scratch = found.scratch
    policy.drill_machine = found.machine
    if found.machine is None:
        policy.drill_authorised_by = None
    elif changed_machine:
        policy.drill_authorised_by = user
    if was_off and found.frequency != BackupPolicy.DrillFrequency.OFF:
        policy.drill_since = timezone.now()  # turned on: judged from now
    policy.save(
        update_fields=[
            "drill_frequency", "drill_sample", "drill_percent", "drill_cap_mb",
            "drill_scratch", "drill_machine", "drill_authorised_by", "drill_since",
        ]
    )  # fmt: skip
    return policy


# -- starting a drill ---------------------------------------------------------------------------
def _latest_point(machine: Machine) -> RecoveryPoint | None:
    return (
        RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True)
        .order_by("-created_at")
        .first()
    )


def drill_runner(machine: Machine, policy: BackupPolicy | None) -> Machine:
    """The machine a drill of ``machine`` runs on: the policy's, while it is registered in the
    same vault; else ``machine`` itself."""
    other = policy.drill_machine if policy is not None else None
    if other is None or other.unregistered_at is not None or other.vault_id != machine.vault_id:
        return machine
    return other


def drill_start(
    *,
    machine: Machine,
    user=None,
    trigger: str = Job.Trigger.ADHOC,
    scheduled_for: datetime | None = None,
    now: datetime | None = None,
) -> Job:
    """Queue a restore drill of ``machine``'s latest recovery point and send it to the
    machine that runs it; ``DrillRefused`` says why not. A scheduled drill records the
    slot it was due at (``scheduled_for``, default now)."""
    # Both import this package (jobs.services): a cycle at import time.
    from jobs.recovery.services import JOB_AUTHORISATION, _authorise_from_portal
    from jobs.services.protection import restore_refusal

    now = now or timezone.now()
    refusal = restore_refusal(machine)
    if refusal:
        raise DrillRefused(refusal)
    policy = BackupPolicy.objects.filter(machine=machine).select_related("drill_machine").first()
    found = DrillSettings.of(policy)
    point = _latest_point(machine)
    if point is None:
        raise DrillRefused(
            f"{machine.name} has no recovery point yet, so there is nothing to restore: "
            "back it up first."
        )
    runner = drill_runner(machine, policy)
    if runner.unregistered_at is not None:
        raise DrillRefused(
            f"{machine.name} is no longer registered; choose a registered machine of the "
            "vault for its drills in its backup policy."
        )
    authoriser = None
    if runner.pk != machine.pk:
        authoriser = policy.drill_authorised_by if policy else None
        if (
            authoriser is None
            or not authoriser.is_active
            or not has_role(authoriser, machine.vault.subscription_id, DRILL_MACHINE_ROLE)
        ):
            raise DrillRefused(
                f"No Contributor or Owner stands behind {runner.name} reading {machine.name}'s "
                "backups (the person who chose it no longer has the role or the account): save the backup "
                "policy's drill settings again."
            )
    # The source's fence (not a lock on the running drill: there may be none), and the
    # runner's row too, whose job this transaction makes.
    with repository_fence(machine.pk, runner.pk):
        running = (
            Job.objects.active()
            .filter(operation=Job.Operation.DRILL, details__source_machine=str(machine.pk))
            .first()
        )
        if running is not None:
            raise DrillAlreadyRunning(f"A restore drill of {machine.name} is already running.")
        cap_bytes = found.cap_mb * 1024 * 1024
        job = Job.objects.create(
            vault_id=machine.vault_id,
            machine=runner,
            operation=Job.Operation.DRILL,
            status=Job.Status.QUEUED if runner.is_online(now) else Job.Status.WAITING,
            trigger=trigger,
            scheduled_for=(scheduled_for or now) if trigger == Job.Trigger.SCHEDULED else None,
            created_by=user,
            details={
                "kind": "drill",
                "source_machine": str(machine.pk),
                "source_name": machine.name,
                "recovery_point": point.snapshot_id,
                "recovery_point_time": point.created_at.isoformat(),
                "sample": found.sample,
                "percent": found.percent,
                "cap_bytes": cap_bytes,
            },
        )
        if authoriser is not None:
            _authorise_from_portal(
                user=authoriser, source=machine, target=runner, lifetime=JOB_AUTHORISATION, job=job
            )
        if user is not None:
            activity.record(
                operation=Operation.DRILL_START,
                user=user,
                vault=machine.vault,
                resource=machine,
                detail={"job": str(job.pk), "runs_on": runner.name},
            )
        services._send_to_machine(
            runner,
            protocol.DRILL_TASK,
            job_id=str(job.pk),
            recovery_point=point.snapshot_id,
            source_machine_id="" if runner.pk == machine.pk else str(machine.pk),
            sample=found.sample,
            percent=found.percent,
            cap_bytes=cap_bytes,
            scratch=found.scratch,
        )
    job_publish(job)
    return job


def drills_schedule(*, now: datetime | None = None) -> list[Job]:
    """The scheduler's step: the restore drills due. A drill runs in the machine's backup
    window, at a time its backup policy backs up (the latest one at or before ``now``, the
    drill's slot): when the machine had a recovery point before that slot and no drill, of
    any outcome, is due or started within the period before it. So the first drill comes at
    the first backup time after the first recovery point, not straight after that backup
    (whenever Back up now ran it), and then one every period, each at a backup time: a
    scheduled drill counts from its slot (``scheduled_for``), so the next one does not
    slip a day for every minute the tick came late.

    A drill due while a backup of the machine is in progress, or queued or waiting since
    its slot, waits for that backup to end, and the first tick after starts it (its slot
    then the latest backup time at or before that tick): it proves the point that backup
    made and does not compete with it for the machine's disk and cores.

    A tick asks the same few queries however many machines have had their drill this
    period or have no recovery point yet: the period's drills and the first points are
    found for all of them at once (``_latest_drills``, ``selectors.first_points``)."""
    now = now or timezone.now()
    started = []
    policies = BackupPolicy.objects.select_related("machine", "machine__vault").filter(
        machine__unregistered_at__isnull=True,
        protection=BackupPolicy.Protection.PROTECTED,
        drill_frequency__in=list(DRILL_PERIODS),
    )
    slots = []
    for policy in policies:
        slot = previous_run(Schedule.from_spec(policy.spec()), zone(policy.machine.time_zone), now)
        if slot is not None:
            slots.append((policy, slot, slot - DRILL_PERIODS[policy.drill_frequency]))
    if not slots:
        return started
    latest = _latest_drills(since=min(period_start for _, _, period_start in slots))
    unproven = []
    for policy, slot, period_start in slots:
        last = latest.get(str(policy.machine_id))
        if last is None or last <= period_start:
            unproven.append((policy, slot))
    first = selectors.first_points([policy.machine_id for policy, _ in unproven])
    for policy, slot in unproven:
        made = first.get(policy.machine_id)
        if made is None or made > slot or selectors.backup_under_way(policy.machine_id, since=slot):
            continue
        try:
            started.append(
                drill_start(
                    machine=policy.machine,
                    trigger=Job.Trigger.SCHEDULED,
                    scheduled_for=slot,
                    now=now,
                )
            )
        except DrillAlreadyRunning:
            continue  # one started meanwhile (Drill now): it proves the point
        except DrillRefused as exc:
            # Recorded as a failed scheduled drill (so the next tick does not try again
            # before the period is over), with its alert.
            machine = policy.machine
            job = Job.objects.create(
                vault_id=machine.vault_id,
                machine=machine,
                operation=Job.Operation.DRILL,
                status=Job.Status.FAILED,
                trigger=Job.Trigger.SCHEDULED,
                scheduled_for=slot,
                started_at=now,
                ended_at=now,
                error=f"The scheduled restore drill did not start: {exc}",
                details={"kind": "drill", "source_machine": str(machine.pk),
                         "source_name": machine.name},
            )  # fmt: skip
            alerts_after_job(job=job, now=now)
            job_publish(job)
    return started


def _latest_drills(*, since: datetime) -> dict[str, datetime]:
    """Source machine id -> when its latest drill after ``since`` was due (its scheduled
    time, or when it was asked for), of any outcome."""
    rows = (
        Job.objects.filter(operation=Job.Operation.DRILL)
        .annotate(due=Coalesce("scheduled_for", "created_at"))
        .filter(due__gt=since)
        .values(source=KT("details__source_machine"))
        .annotate(last=Max("due"))
    )
    return {row["source"]: row["last"] for row in rows}


def drills_check_missed(*, now: datetime | None = None) -> int:
    """Warn about machines whose drills are on but none succeeded within the period and its
    grace (judged from when drills were turned on, and only once the machine has a point)."""
    now = now or timezone.now()
    missed = 0
    policies = BackupPolicy.objects.select_related("machine", "machine__vault").filter(
        machine__unregistered_at__isnull=True,
        protection=BackupPolicy.Protection.PROTECTED,
        drill_frequency__in=list(DRILL_PERIODS),
    )
    for policy in policies:
        late = DRILL_PERIODS[policy.drill_frequency] + DRILL_GRACE
        if policy.drill_since > now - late:
            continue
        first_point = (
            RecoveryPoint.objects.filter(machine_id=policy.machine_id)
            .order_by("created_at")
            .values_list("created_at", flat=True)
            .first()
        )
        if first_point is None or first_point > now - late:
            continue  # nothing to drill for a whole period yet
        if selectors.drills_proven(policy.machine_id).filter(ended_at__gt=now - late).exists():
            continue
        last = selectors.drills_proven(policy.machine_id).order_by("-ended_at").first()
        alert_raise(
            vault=policy.machine.vault,
            machine=policy.machine,
            kind=Alert.Kind.DRILL_MISSED,
            severity=Alert.Severity.WARNING,
            message=(
                f"No restore drill of {policy.machine.name} has succeeded for "
                f"{late.days} days ({policy.get_drill_frequency_display().lower()}, and "
                f"{DRILL_GRACE.days} days' grace); "
                + (
                    f"the last proof is from {last.ended_at:%Y-%m-%d}."
                    if last
                    else "it was never proven restorable."
                )
                + " Check that the machine that runs the drills is online, or run one now."
            ),
            now=now,
        )
        missed += 1
    return missed


# -- the evidence -----------------------------------------------------------------------------
def drill_evidence_check(*, job: Job, status: str, stats: dict, snapshot_id: str) -> dict:
    """The evidence of a drill result, or ``DrillEvidenceRefused``: the point is the one the
    portal asked for, of the machine the job is about, and the figures hold together (no more
    files or bytes than the point holds, no more than the cap, no faster than a disk)."""
    if status != Job.Status.COMPLETED and not stats and not snapshot_id:
        return {}  # a drill that failed or stopped before any evidence: its reason stands
    asked = job.details.get("recovery_point")
    if snapshot_id != asked:
        raise DrillEvidenceRefused(
            f"the drill reports recovery point {snapshot_id[:12] or '(none)'!r}, but the portal "
            f"asked for {str(asked)[:12]!r}"
        )
    missing = [key for key in protocol.DRILL_STATS if key not in stats]
    if missing:
        raise DrillEvidenceRefused(f"the drill's evidence lacks {', '.join(missing)}")
    ev = {key: int(stats[key]) for key in protocol.DRILL_STATS}
    point = RecoveryPoint.objects.filter(
        machine_id=job.details.get("source_machine"), snapshot_id=asked
    ).first()
    if point is None:
        raise DrillEvidenceRefused("the recovery point drilled is no longer known to the portal")
    if point.file_count and ev["point_files"] > point.file_count:
        raise DrillEvidenceRefused(
            f"the drill counts {ev['point_files']} files in a point of {point.file_count}"
        )
    if point.logical_bytes and ev["point_bytes"] > point.logical_bytes:
        raise DrillEvidenceRefused(
            f"the drill counts {ev['point_bytes']} bytes in a point of {point.logical_bytes}"
        )
    if ev["files"] > ev["point_files"] or ev["bytes"] > ev["point_bytes"]:
        raise DrillEvidenceRefused("the drill restored more than the point holds")
    if ev["mismatches"] > ev["point_files"]:
        raise DrillEvidenceRefused("the drill reports more mismatches than the point has files")
    cap = job.details.get("cap_bytes")
    if job.details.get("sample") == protocol.DRILL_SAMPLE and cap and ev["bytes"] > cap:
        raise DrillEvidenceRefused(f"the drill restored {ev['bytes']} bytes, over its cap {cap}")
    if ev["bytes"] and (
        ev["restore_ms"] == 0
        or ev["bytes"] * 1000 / ev["restore_ms"] > protocol.DRILL_MAX_BYTES_PER_SECOND
    ):
        raise DrillEvidenceRefused("the drill reports a restore faster than any disk")
    if (
        job.started_at
        and ev["restore_ms"] > (timezone.now() - job.started_at).total_seconds() * (1000) + 60_000
    ):
        raise DrillEvidenceRefused("the drill reports a restore longer than the job has run")
    if status == Job.Status.COMPLETED:
        if ev["mismatches"]:
            raise DrillEvidenceRefused("a drill with mismatches cannot be Completed")
        if ev["point_files"] and not ev["files"]:
            raise DrillEvidenceRefused("a Completed drill must have restored files")
    return ev
