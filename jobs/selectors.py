"""Reads of the jobs app: the jobs list and its counts, what stops a backup starting,
recovery points, storage used, alerts, backup items. Every list takes the user and shows
only what they may see."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from urllib.parse import urlencode

from django.core.cache import cache
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Count, Exists, Max, Min, OuterRef, Q, QuerySet, Subquery, Sum
from django.utils import timezone
from redis.exceptions import RedisError

from agents import dispatch
from agents.models import Machine
from jobs.models import Alert, BackupPolicy, Job, RecoveryPoint
from jobs.schedule import zone
from portal import access

PAGE_SIZE = 50
RANGES = {
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
    "all": ("All time", None),
}


@dataclass
class JobFilters:
    status: str = ""
    operation: str = ""
    machine: str = ""
    vault: str = ""
    range: str = "7d"
    start: datetime | None = None
    end: datetime | None = None

    @classmethod
    def from_query(cls, query) -> JobFilters:
        filters = cls(
            status=query.get("status", "") if query.get("status") in Job.Status.values else "",
            operation=query.get("operation", "")
            if query.get("operation") in Job.Operation.values
            else "",
            machine=query.get("machine", "")[:64],
            vault=query.get("vault", "")[:64],
            range=query.get("range", "7d") if query.get("range") in (*RANGES, "custom") else "7d",
        )
        if filters.range == "custom":
            filters.start = _parse_day(query.get("start"))
            filters.end = _parse_day(query.get("end"), end=True)
        return filters

    def as_query(self, **override) -> str:
        values = {
            "status": self.status,
            "operation": self.operation,
            "machine": self.machine,
            "vault": self.vault,
            "range": self.range,
        }
        if self.range == "custom":
            values["start"] = self.start.date().isoformat() if self.start else ""
            values["end"] = self.end_day.isoformat() if self.end_day else ""
        values.update(override)
        return urlencode({k: v for k, v in values.items() if v})

    @property
    def end_day(self) -> date | None:
        """The last day the custom range includes (the To box): ``end`` is the next day's
        midnight, the bound the query uses."""
        return (self.end - timedelta(days=1)).date() if self.end else None


def _parse_day(value, *, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        day = datetime.fromisoformat(str(value)[:10])
    except ValueError:
        return None
    moment = timezone.make_aware(day) if timezone.is_naive(day) else day
    return moment + timedelta(days=1) if end else moment


def _visible_jobs(user, filters: JobFilters, *, now: datetime):
    qs = access.for_user(user, Job)
    if filters.operation:
        qs = qs.filter(operation=filters.operation)
    if filters.machine:
        qs = qs.filter(machine_id=filters.machine)
    if filters.vault:
        qs = qs.filter(vault_id=filters.vault)
    span = RANGES.get(filters.range, (None, None))[1]
    if span is not None:
        qs = qs.filter(created_at__gte=now - span)
    if filters.range == "custom":
        if filters.start:
            qs = qs.filter(created_at__gte=filters.start)
        if filters.end:
            qs = qs.filter(created_at__lt=filters.end)
    return qs


def job_list(user, filters: JobFilters, *, page: int | str = 1, now: datetime | None = None):
    """(page of jobs, counts by status) in a constant number of queries."""
    now = now or timezone.now()
    for name in ("machine", "vault"):
        value = getattr(filters, name)
        if value:
            try:
                uuid.UUID(value)
            except ValueError:
                setattr(filters, name, "")
    base = _visible_jobs(user, filters, now=now)
    counts = dict.fromkeys(Job.Status.values, 0)
    # COUNT(*), not COUNT(id): the count then reads only the covering index's columns.
    for row in base.order_by().values("status").annotate(n=Count("*")):
        counts[row["status"]] = row["n"]
    qs = base.filter(status=filters.status) if filters.status else base
    qs = qs.select_related("machine", "vault").order_by("-created_at")
    paginator = Paginator(qs, PAGE_SIZE)
    # The counts by status already say how many jobs match: no second COUNT over them.
    paginator.count = counts[filters.status] if filters.status else sum(counts.values())
    page_of_jobs = paginator.get_page(page)
    broker_waits_attach(page_of_jobs.object_list)
    return page_of_jobs, counts


@dataclass(frozen=True)
class BrokerWait:
    """A job not started because the broker refused its agent message (the outbox keeps
    trying): since when, how many tries, the broker's last answer."""

    since: datetime
    attempts: int
    last_error: str


_NOT_STARTED = (Job.Status.QUEUED, Job.Status.WAITING)
_UNKNOWN = object()


def _as_wait(message) -> BrokerWait | None:
    # Not tried yet, and not held back behind a refused one: nothing refused it.
    if message is None or not (message.attempts or message.last_error):
        return None
    return BrokerWait(
        since=message.created_at, attempts=message.attempts, last_error=message.last_error
    )


def broker_waits_attach(jobs) -> list:
    """Look up, in one query, which of ``jobs`` wait for the broker (for a list page)."""
    jobs = list(jobs)
    waiting = [job for job in jobs if job.status in _NOT_STARTED]
    found = dispatch.pending_for_jobs([job.pk for job in waiting]) if waiting else {}
    for job in jobs:
        job._broker_wait = _as_wait(found.get(job.pk))
    return jobs


def broker_wait(job) -> BrokerWait | None:
    """Whether ``job`` waits for the message broker (``agents.dispatch``'s outbox), read
    from the database: its row says so after a reload as after a push."""
    if job.status not in _NOT_STARTED:
        return None
    cached = getattr(job, "_broker_wait", _UNKNOWN)
    if cached is _UNKNOWN:
        broker_waits_attach([job])
        cached = job._broker_wait
    return cached  # type: ignore[return-value]


# --- Live progress: the latest report of a running job, newer than its row ---------------


def live_progress_key(job_id) -> str:
    return f"job-progress:{job_id}"


def live_progress(job: Job) -> dict | None:
    """The last progress report of a running job when it is newer than the row: the fields
    to show (and to write) instead of the row's. None when the row is current."""
    if job.status != Job.Status.RUNNING:
        return None
    try:
        cached = cache.get(live_progress_key(job.pk))
    except RedisError:
        return None  # the cache is away: the row holds the report (job_record_progress)
    return _newer(job, cached)


def _newer(job: Job, cached: dict | None) -> dict | None:
    if not cached:
        return None
    at = cached["last_report_at"]
    if job.last_report_at is not None and at <= job.last_report_at:
        return None
    return cached


def with_live_progress(jobs) -> list[Job]:
    """``jobs`` with each running one showing its latest report (one cache round trip)."""
    jobs = list(jobs)
    running = [job for job in jobs if job.status == Job.Status.RUNNING]
    if running:
        try:
            found = cache.get_many([live_progress_key(job.pk) for job in running])
        except RedisError:
            found = {}  # the cache is away: the rows hold the reports
        for job in running:
            newer = _newer(job, found.get(live_progress_key(job.pk)))
            if newer is not None:
                for field, value in newer.items():
                    setattr(job, field, value)
    return jobs


def status_counts_labelled(counts: dict) -> list[tuple[str, str, int]]:
    return [(value, label, counts.get(value, 0)) for value, label in Job.Status.choices]


@dataclass(frozen=True)
class BackupBlockers:
    """What stops a backup of a machine starting now; nothing does when all are empty."""

    running: Job | None  # the machine's backup that is still queued, waiting or running
    retain_until: str  # what is wrong with the chosen "retain backup till" date, or ""
    stopped: str = ""  # why the machine is not protected (protection stopped), or ""
    seed_waiting: bool = False  # the first backup is to come from a seed disk
    # with seed_waiting: the policy's seed staging folder, where Back up now has the agent
    # write the first backup ("": none named, so the portal cannot start it)
    seed_folder: str = ""


def seed_waiting(machine) -> bool:
    """The machine's policy seeds the first backup offline and no point exists yet (the
    seed's import records the first): no backup goes over the network until then."""
    policy = BackupPolicy.objects.filter(machine=machine).only("initial_backup").first()
    if policy is None or policy.initial_backup != BackupPolicy.InitialBackup.OFFLINE:
        return False
    return not RecoveryPoint.objects.filter(machine=machine).exists()


def seed_folder(machine) -> str:
    """The seed staging folder the machine's policy names, or ""."""
    policy = BackupPolicy.objects.filter(machine=machine).only("seed_staging").first()
    return policy.seed_staging if policy is not None else ""


def seed_exports(machine):
    """The machine's offline backups to disk, newest first."""
    return Job.objects.filter(machine=machine, operation=Job.Operation.SEED_EXPORT).order_by(
        "-created_at"
    )


def seed_written(machine) -> Job | None:
    """The latest offline backup to disk that wrote a seed, while the seed is awaited."""
    return (
        seed_exports(machine)
        .filter(status__in=(Job.Status.COMPLETED, Job.Status.WARNING))
        .select_related("machine")
        .first()
    )


def seed_imports(machine):
    """The machine's seed imports, newest first."""
    return Job.objects.filter(machine=machine, operation=Job.Operation.IMPORT).order_by(
        "-created_at"
    )


def machine_today(machine, *, now: datetime | None = None) -> date:
    """Today's date in the machine's time zone."""
    return (now or timezone.now()).astimezone(zone(machine.time_zone)).date()


def backup_blockers(
    *, machine, retain_until: date | None = None, now: datetime | None = None
) -> BackupBlockers:
    """The rules ``backup_start`` enforces, for Back up now to show before anyone presses
    the button: no backup of a machine whose protection is stopped, one backup per machine
    at a time, and a retain-until date not in the past (where the machine is)."""
    running = Job.objects.active().backups().filter(machine=machine).first()
    problem = ""
    if retain_until is not None and retain_until < machine_today(machine, now=now):
        problem = "Choose today or a later date."
    waiting = seed_waiting(machine)
    return BackupBlockers(
        running=running,
        retain_until=problem,
        stopped=stopped_reason(machine),
        seed_waiting=waiting,
        seed_folder=seed_folder(machine) if waiting else "",
    )


def id_slices(ids: list) -> list[list]:
    """``ids`` in slices small enough for one ``__in`` look-up each (SQLite allows 999 or
    32,766 parameters a statement by its version, PostgreSQL 65,535)."""
    size = min(connection.features.max_query_params or 10_000, 10_000) - 1
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def first_points(machine_ids: list) -> dict:
    """Machine id -> when its oldest kept recovery point was made, for those that have one."""
    first = {}
    for ids in id_slices(machine_ids):
        rows = (
            RecoveryPoint.objects.filter(machine_id__in=ids, removed_at__isnull=True)
            .values("machine_id")
            .annotate(first=Min("created_at"))
        )
        first.update({row["machine_id"]: row["first"] for row in rows})
    return first


def backup_under_way(machine_id, *, since: datetime) -> bool:
    """Whether a backup of the machine is in progress, or queued or waiting for its agent
    since ``since`` (one queued earlier and still waiting is a stuck one: it holds nothing)."""
    return (
        Job.objects.active()
        .backups()
        .filter(Q(status=Job.Status.RUNNING) | Q(created_at__gte=since), machine_id=machine_id)
        .exists()
    )


def stopped_reason(machine) -> str:
    """Why ``machine`` is backed up no more (its protection is stopped), or ""."""
    policy = BackupPolicy.objects.filter(machine=machine).only("protection").first()
    if policy is None or policy.is_protected:
        return ""
    if policy.protection == BackupPolicy.Protection.STOPPED:
        return (
            f"Protection of {machine.name} is stopped: no backups run until someone chooses "
            "Resume backup."
        )
    return (
        f"The backup data of {machine.name} is {policy.get_protection_display().lower()}: "
        "no backups run."
    )


def live_points(machine):
    return RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True).order_by(
        "-created_at"
    )


def storage_used(*, machine=None, vault=None) -> int:
    """Bytes stored for the kept recovery points (the vault overview chart's figure)."""
    qs = RecoveryPoint.objects.filter(removed_at__isnull=True)
    qs = qs.filter(machine=machine) if machine is not None else qs.filter(vault=vault)
    return qs.aggregate(total=Sum("stored_bytes"))["total"] or 0


def alert_counts(vault) -> dict:
    return alert_counts_by_vault([vault.pk])[vault.pk]


def alert_counts_by_vault(vault_ids) -> dict:
    """Open alerts by severity for each vault, in one query: ``{vault_id: counts}``."""
    rows = (
        Alert.objects.filter(vault_id__in=vault_ids, resolved_at__isnull=True)
        .values("vault_id", "severity")
        .annotate(n=Count("id"))
        .order_by()
    )
    by_vault = {vault_id: {"critical": 0, "warning": 0} for vault_id in vault_ids}
    for row in rows:
        by_vault[row["vault_id"]][row["severity"]] = row["n"]
    for counts in by_vault.values():
        counts["total"] = counts["critical"] + counts["warning"]
    return by_vault


def vault_alerts(vault, *, show: str = "active"):
    qs = Alert.objects.filter(vault=vault).select_related(
        "machine", "job", "acknowledged_by", "closed_by"
    )
    if show == "active":
        qs = qs.filter(resolved_at__isnull=True)
    elif show == "resolved":
        qs = qs.filter(resolved_at__isnull=False)
    return qs.order_by("-last_raised_at")[:500]


@dataclass(frozen=True)
class ProtectionSummary:
    """A backup item's state in words, for Backup items and the machine page."""

    state: str  # BackupPolicy.Protection, or "none" (no policy) / "unregistered"
    label: str
    status_class: str
    sentence: str  # what it means and what happens next
    days_left: int | None = None  # soft deleted: whole days until the data is removed


def protection_summary(machine, policy, *, now: datetime | None = None) -> ProtectionSummary:
    now = now or timezone.now()
    P = BackupPolicy.Protection
    if policy is None:
        return ProtectionSummary(
            "none", "Not protected", "status-muted", "No backup policy yet: nothing is backed up."
        )
    when = "%Y-%m-%d %H:%M UTC"
    if policy.protection == P.PROTECTED and machine.unregistered_at is not None:
        return ProtectionSummary(
            "unregistered",
            "Unregistered",
            "status-muted",
            f"Unregistered on {machine.unregistered_at:{when}}: no backups run. Its recovery "
            "points stay restorable; Stop backup › delete backup data removes them.",
        )
    if policy.protection == P.PROTECTED:
        return ProtectionSummary(
            P.PROTECTED,
            "Protected",
            "status-ok",
            f"Backed up on the schedule of policy version {policy.version}.",
        )
    if policy.protection == P.STOPPED:
        kept = (
            "Expired recovery points are removed as the policy's retention says; the latest "
            "one is always kept."
            if policy.stop_retention == BackupPolicy.StopRetention.POLICY
            else "Every recovery point is kept, whatever its age, until the backup data is deleted."
        )
        since = f" on {policy.stopped_at:{when}}" if policy.stopped_at else ""
        return ProtectionSummary(
            P.STOPPED,
            "Protection stopped",
            "status-warning",
            f"Protection stopped{since}: no scheduled or ad hoc backups run. {kept} The "
            "recovery points can be restored; Resume backup protects the machine again.",
        )
    if policy.protection == P.SOFT_DELETED:
        by = f" by {policy.deleted_by.get_username()}" if policy.deleted_by else ""
        reason = f" (reason: {policy.delete_reason})" if policy.delete_reason else ""
        deleted = f"Backup data deleted on {policy.deleted_at:{when}}{by}{reason}."
        if policy.purge_after is None or policy.purge_after <= now:
            return ProtectionSummary(
                P.SOFT_DELETED,
                "Soft deleted",
                "status-error",
                f"{deleted} The soft-delete period has ended: the portal's worker is removing "
                "the data, which can no longer be undeleted.",
                0,
            )
        left = policy.purge_after - now
        days = left.days + (1 if left.seconds or left.microseconds else 0)
        return ProtectionSummary(
            P.SOFT_DELETED,
            "Soft deleted",
            "status-error",
            f"{deleted} It is kept {days} more day{'s' if days != 1 else ''}, until "
            f"{policy.purge_after:{when}}, then removed for good. Its recovery points cannot "
            "be restored until it is undeleted; Undelete returns it to protection stopped, "
            "data retained.",
            days,
        )
    purged = f" on {policy.purged_at:{when}}" if policy.purged_at else ""
    return ProtectionSummary(
        P.DELETED,
        "Backup data deleted",
        "status-muted",
        f"The backup data was removed{purged}; nothing is left to restore. To back this "
        "machine up again, register it again with --replace (a new repository).",
    )


def backup_items(vault):
    """The vault's machines with their last backup, latest point and storage used: every
    registered machine, and an unregistered one while it still has recovery points."""
    last_job = Job.objects.filter(machine=OuterRef("pk"), operation=Job.Operation.BACKUP).order_by(
        "-created_at"
    )
    has_points = RecoveryPoint.objects.filter(machine=OuterRef("pk"), removed_at__isnull=True)
    return (
        Machine.objects.filter(vault=vault)
        .filter(Q(unregistered_at__isnull=True) | Exists(has_points))
        .select_related("backup_policy", "backup_policy__deleted_by")
        .annotate(
            last_job_id=Subquery(last_job.values("id")[:1]),
            last_job_status=Subquery(last_job.values("status")[:1]),
            last_job_at=Subquery(last_job.values("created_at")[:1]),
            latest_point_at=Max(
                "recovery_points__created_at", filter=Q(recovery_points__removed_at__isnull=True)
            ),
            points=Count("recovery_points", filter=Q(recovery_points__removed_at__isnull=True)),
            stored=Sum(
                "recovery_points__stored_bytes",
                filter=Q(recovery_points__removed_at__isnull=True),
            ),
        )
        .order_by("name")
    )


def vault_overview(vault) -> dict:
    """Counts for the vaults app's overview tiles (registered in jobs/apps.py)."""
    since = timezone.now() - timedelta(hours=24)
    rows = (
        Job.objects.filter(vault=vault, created_at__gte=since)
        .values("status")
        .annotate(n=Count("id"))
    )
    by_status = {row["status"]: row["n"] for row in rows}
    return {
        "protected_items": RecoveryPoint.objects.filter(vault=vault, removed_at__isnull=True)
        .values("machine_id")
        .distinct()
        .count(),
        "jobs_24h": {
            "in_progress": sum(by_status.get(s, 0) for s in Job.ACTIVE),
            "succeeded": by_status.get(Job.Status.COMPLETED, 0),
            "warning": by_status.get(Job.Status.WARNING, 0),
            "failed": by_status.get(Job.Status.FAILED, 0),
        },
        "active_alerts": Alert.objects.filter(vault=vault, resolved_at__isnull=True).count(),
    }


def vault_replication_status(vault) -> dict:
    """How far each machine container of a geo-redundant vault is copied to the secondary
    (jobs.services.replication keeps ``ReplicaState``): the largest lag, what is pending,
    when each was last checked, and whether a Replicate job is running."""
    from jobs.models import ReplicaState
    from jobs.services.replication import replication_lag

    now = timezone.now()
    rows = []
    for state in ReplicaState.objects.filter(vault=vault).select_related("machine"):
        rows.append(
            {
                "machine": state.machine,
                "lag": replication_lag(state, now),
                "pending_blobs": state.pending_blobs,
                "pending_bytes": state.pending_bytes,
                "checked_at": state.checked_at,
                "synced_through": state.synced_through,
                "copied_bytes": state.copied_bytes,
                "error": state.error,
            }
        )
    rows.sort(key=lambda row: row["machine"].name.lower())
    lags = [row["lag"] for row in rows if row["lag"] is not None]
    return {
        "machines": rows,
        "lag": max(lags) if lags else None,
        "pending_blobs": sum(row["pending_blobs"] for row in rows),
        "pending_bytes": sum(row["pending_bytes"] for row in rows),
        "running": Job.objects.filter(
            vault=vault, operation=Job.Operation.REPLICATE, status__in=Job.ACTIVE
        ).exists(),
    }


def passphrase_changed_at(machine):
    """When ``machine``'s encryption passphrase was last changed, or None."""
    from jobs.models import PassphraseChange

    return (
        PassphraseChange.objects.filter(machine=machine, completed_at__isnull=False)
        .order_by("-completed_at")
        .values_list("completed_at", flat=True)
        .first()
    )


# -- restore drills (jobs.services.drills, docs/drills.md) ------------------------------------
def drills_proven(machine_id) -> QuerySet[Job]:
    """The drills that proved ``machine_id``'s backups restore (wherever they ran)."""
    return Job.objects.filter(
        operation=Job.Operation.DRILL,
        status=Job.Status.COMPLETED,
        details__source_machine=str(machine_id),
    )


def drill_evidence(job: Job) -> dict | None:
    """A drill job's evidence with the figures people read (None when it has none)."""
    ev = (job.details or {}).get("evidence")
    if not ev:
        return None
    seconds = ev["restore_ms"] / 1000
    rate = ev["bytes"] / seconds if seconds > 0 else 0.0
    return {
        **ev,
        "seconds": seconds,
        "rate_mbps": rate / 1e6,
        "full_seconds": ev["point_bytes"] / rate if rate > 0 else None,
        "job": job,
        "at": job.ended_at,
    }


def drill_last_proven(machine: Machine) -> dict | None:
    """The evidence of the last drill that proved ``machine``'s backups restore."""
    job = drills_proven(machine.pk).order_by("-ended_at").first()
    return drill_evidence(job) if job is not None else None


def drill_latest(machine: Machine) -> Job | None:
    return (
        Job.objects.filter(operation=Job.Operation.DRILL, details__source_machine=str(machine.pk))
        .order_by("-created_at")
        .first()
    )
