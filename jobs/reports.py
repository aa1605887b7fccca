"""Reports: the numbers behind the Reports page's charts, aggregated in SQL.

Every figure is a day series over the last 30 or 90 days, days counted in the portal's zone
(``TIME_ZONE``). Each chart costs a fixed number of queries whatever the number of jobs and
recovery points (``TruncDate`` + ``Count``/``Sum`` on SQLite and PostgreSQL alike); Python
only walks days and series. Where the numbers come from, and the expected-growth formula,
are in docs/reports.md.

A ``Chart`` is exactly what is drawn: the SVG (``jobs.report_svg``), the table view and the
CSV export all render the same object.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo

from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from agents.models import Machine
from jobs import retention
from jobs.models import BackupPolicy, Job, RecoveryPoint
from jobs.schedule import zone
from vaults.models import Vault, VaultUsageSample

PERIODS = (30, 90)
MAX_SERIES = 6  # more machines or vaults than this are summed into "Others"
SAMPLE_BATCH = 400  # (vault, moment) pairs per query for the vaults' end-of-day samples
OUTCOMES = (
    (Job.Status.COMPLETED, "Completed"),
    (Job.Status.WARNING, "Completed with warnings"),
    (Job.Status.FAILED, "Failed"),
    (Job.Status.CANCELLED, "Cancelled"),
)


@dataclass(frozen=True)
class Series:
    name: str
    values: list[int | None]  # None: not known that day (before a vault's first measurement)
    projected: bool = False  # drawn dashed: an expectation, not a measurement
    color: int = 0  # index into the chart palette; a projection shares its machine's
    key: object = None  # the machine or vault drawn (None: a sum or an outcome)


@dataclass(frozen=True)
class Chart:
    slug: str
    title: str
    kind: str  # "stacked" (bars) or "lines"
    unit: str  # "count", "bytes" or "seconds"
    days: list[date]
    series: list[Series]
    empty: str  # what to do when there is nothing to draw
    note: str = ""  # the legend's explanation, where a figure needs one

    @property
    def has_data(self) -> bool:
        return any(v for s in self.series if not s.projected for v in s.values)

    def rows(self) -> list[list]:
        """The table view and the CSV: one row per day, one column per series."""
        return [[day, *(s.values[i] for s in self.series)] for i, day in enumerate(self.days)]


@dataclass(frozen=True)
class Expectation:
    """One machine's expected storage once its policy's retention is full (docs/reports.md)."""

    machine: str
    points_kept: int | None  # the most points the policy keeps at once; None: no policy
    average_added: int | None  # observed mean bytes added per backup; None: no backup
    stored_now: int
    reason: str = ""  # why there is no projection

    @property
    def expected(self) -> int | None:
        if self.points_kept is None or self.average_added is None:
            return None
        return self.points_kept * self.average_added


@dataclass(frozen=True)
class Scope:
    """What a report covers: these vaults (already limited to what the user may read),
    optionally one machine, over ``days`` days ending today in ``tz``."""

    vault_ids: Sequence
    days: int
    tz: tzinfo
    now: datetime
    machine_id: object = None

    @property
    def day_list(self) -> list[date]:
        today = timezone.localtime(self.now, self.tz).date()
        return [today - timedelta(days=self.days - 1 - i) for i in range(self.days)]

    @property
    def since(self) -> datetime:
        return datetime.combine(self.day_list[0], time.min, tzinfo=self.tz)

    def end_of(self, day: date) -> datetime:
        return datetime.combine(day + timedelta(days=1), time.min, tzinfo=self.tz)

    def jobs(self):
        qs = Job.objects.filter(vault_id__in=self.vault_ids)
        return qs.filter(machine_id=self.machine_id) if self.machine_id else qs

    def points(self):
        qs = RecoveryPoint.objects.filter(vault_id__in=self.vault_ids)
        return qs.filter(machine_id=self.machine_id) if self.machine_id else qs


@dataclass(frozen=True)
class Report:
    scope: Scope
    charts: list[Chart]
    expectations: list[Expectation] = field(default_factory=list)

    def chart(self, slug: str) -> Chart | None:
        return next((c for c in self.charts if c.slug == slug), None)


def _top(totals: dict, names: dict, limit: int = MAX_SERIES) -> tuple[list, set]:
    """The keys to draw on their own (largest totals first, then by name) and the rest."""
    ranked = sorted(totals, key=lambda k: (-totals[k], names.get(k, "")))
    return ranked[:limit], set(ranked[limit:])


def _series_by_key(per_day: dict, days: list[date], names: dict, *, others: str) -> list[Series]:
    """``per_day``: {key: {day: value}} → one series per top key, the rest summed."""
    index = {day: i for i, day in enumerate(days)}
    totals = {k: sum(x or 0 for x in v.values()) for k, v in per_day.items()}
    top, rest = _top(totals, names)
    series = []
    for color, key in enumerate(top):
        values: list[int | None] = [0] * len(days)
        for day, value in per_day[key].items():
            values[index[day]] = value
        series.append(Series(names.get(key, str(key)), values, color=color, key=key))
    if rest:
        summed = [0] * len(days)
        for key in rest:
            for day, value in per_day[key].items():
                summed[index[day]] += value or 0
        values = list(summed)
        series.append(Series(f"{others} ({len(rest)})", values, color=len(top)))
    return series


# --- job outcomes -----------------------------------------------------------------------
def job_outcomes(scope: Scope) -> Chart:
    """Finished jobs of every kind per day, by outcome, on the day they ended."""
    days = scope.day_list
    index = {day: i for i, day in enumerate(days)}
    rows = (
        scope.jobs()
        .filter(status__in=[s for s, _ in OUTCOMES])
        .annotate(finished=Coalesce("ended_at", "created_at"))
        .filter(finished__gte=scope.since)
        .annotate(day=TruncDate("finished", tzinfo=scope.tz))
        .values("day", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    counts = {status: [0] * len(days) for status, _ in OUTCOMES}
    for row in rows:
        if row["day"] in index:
            counts[row["status"]][index[row["day"]]] += row["n"]
    return Chart(
        slug="outcomes",
        title="Job outcomes per day",
        kind="stacked",
        unit="count",
        days=days,
        series=[
            Series(label, counts[status], color=i) for i, (status, label) in enumerate(OUTCOMES)
        ],
        empty=f"No jobs finished in the last {scope.days} days. Jobs appear here when a "
        "scheduled backup runs or someone presses Back up now on a machine.",
        note="Every job kind (backup, restore, verify …), counted on the day it ended.",
    )


# --- backup duration and data transferred -----------------------------------------------
def backup_activity(scope: Scope, names: dict) -> tuple[Chart, Chart]:
    """Finished backups' data transferred and time taken, per machine per day."""
    days = scope.day_list
    rows = (
        scope.jobs()
        .filter(
            operation=Job.Operation.BACKUP,
            status__in=Job.FINISHED,
            ended_at__gte=scope.since,
            machine__isnull=False,
        )
        .annotate(day=TruncDate("ended_at", tzinfo=scope.tz))
        .values("machine_id", "day")
        .annotate(
            sent=Sum("bytes_transferred"),
            took=Sum(
                ExpressionWrapper(F("ended_at") - F("started_at"), output_field=DurationField()),
                filter=Q(started_at__isnull=False),
            ),
        )
        .order_by()
    )
    sent: dict = defaultdict(dict)
    took: dict = defaultdict(dict)
    for row in rows:
        if row["day"] not in days:
            continue
        sent[row["machine_id"]][row["day"]] = int(row["sent"] or 0)
        # Whole seconds, rounded up: a backup of a few files takes under one, and 0 would
        # leave the chart saying no backup finished beside the data chart that shows it.
        took[row["machine_id"]][row["day"]] = (
            math.ceil(row["took"].total_seconds()) if row["took"] else 0
        )
    empty = (
        f"No backups finished in the last {scope.days} days. Set a backup policy on a machine "
        "or press Back up now to start one."
    )
    return (
        Chart(
            slug="transferred",
            title="Data transferred by backups per day",
            kind="stacked",
            unit="bytes",
            days=days,
            series=_series_by_key(sent, days, names, others="Other machines"),
            empty=empty,
            note="What each machine's backups sent to storage, by the day they ended.",
        ),
        Chart(
            slug="duration",
            title="Backup duration per day",
            kind="stacked",
            unit="seconds",
            days=days,
            series=_series_by_key(took, days, names, others="Other machines"),
            empty=empty,
            note="Time from start to end of each machine's backups, summed per day (whole "
            "seconds, rounded up).",
        ),
    )


# --- storage ----------------------------------------------------------------------------
def _carry(values_by_day: dict, days: list[date], start: int | None) -> list[int | None]:
    """A value per day: the day's own, or the last one before it (None before the first)."""
    out, current = [], start
    for day in days:
        current = values_by_day.get(day, current)
        out.append(current)
    return out


def vault_storage(scope: Scope) -> Chart:
    """Each vault's measured storage (``VaultUsageSample``) at the end of each day."""
    days = scope.day_list
    vaults = dict(Vault.objects.filter(pk__in=scope.vault_ids).values_list("pk", "name"))
    samples = VaultUsageSample.objects.filter(vault_id__in=vaults)
    before = dict(
        samples.filter(taken_at__lt=scope.since)
        .values("vault_id")
        .annotate(at=Max("taken_at"))
        .values_list("vault_id", "at")
    )
    last = list(
        samples.filter(taken_at__gte=scope.since)
        .annotate(day=TruncDate("taken_at", tzinfo=scope.tz))
        .values("vault_id", "day")
        .annotate(at=Max("taken_at"))
        .values_list("vault_id", "at")
    )
    wanted = [*before.items(), *last]
    found: dict = defaultdict(dict)
    start: dict = {}
    # At most one sample per vault per day: batched so that many vaults stay under the
    # database's limit on query parameters (SQLite's is the lowest).
    for offset in range(0, len(wanted), SAMPLE_BATCH):
        lookup = Q()
        for vault_id, at in wanted[offset : offset + SAMPLE_BATCH]:
            lookup |= Q(vault_id=vault_id, taken_at=at)
        for vault_id, at, used in samples.filter(lookup).values_list(
            "vault_id", "taken_at", "bytes_used"
        ):
            if at < scope.since:
                start[vault_id] = used
            else:
                found[vault_id][timezone.localtime(at, scope.tz).date()] = used
    per_day = {
        v: dict(zip(days, _carry(found.get(v, {}), days, start.get(v)), strict=True))
        for v in {*found, *start}
    }
    return Chart(
        slug="vault-storage",
        title="Storage used per vault",
        kind="lines",
        unit="bytes",
        days=days,
        series=_series_by_key(per_day, days, vaults, others="Other vaults"),
        empty="No storage measured yet. Haven measures each deployed vault's storage "
        "once a day; the first figure appears after the vault's deployment completes.",
        note="Measured in storage (the vault's containers) at the end of each day.",
    )


def _policies(machine_ids) -> dict:
    return {
        p.machine_id: p
        for p in BackupPolicy.objects.filter(machine_id__in=machine_ids).select_related("machine")
    }


def points_kept(policy: BackupPolicy, *, now: datetime) -> int:
    """The most recovery points ``policy`` keeps at once over a year of daily runs that
    all succeed (``jobs.retention.preview``: the retention simulation the policy page shows)."""
    return retention.preview(policy.spec(), zone(policy.machine.time_zone), now).peak


def machine_storage(scope: Scope, names: dict) -> tuple[Chart, list[Expectation]]:
    """Each machine's stored bytes from its recovery points, with the expected growth.

    On a day's end a machine holds the ``stored_bytes`` (what each point added) of the
    points created by then and not yet removed by then. Three aggregate queries: what was
    held when the window opened, what was added per day, what was removed per day.
    """
    days = scope.day_list
    since = scope.since
    points = scope.points()
    opening = {
        row["machine_id"]: row
        for row in points.filter(created_at__lt=since)
        .values("machine_id")
        .annotate(
            held=Sum("stored_bytes", filter=Q(removed_at__isnull=True) | Q(removed_at__gte=since)),
            made=Count("id"),
        )
        .order_by()
    }
    added: dict = defaultdict(dict)
    made: dict = defaultdict(dict)
    for row in (
        points.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at", tzinfo=scope.tz))
        .values("machine_id", "day")
        .annotate(added=Sum("stored_bytes"), made=Count("id"))
        .order_by()
    ):
        added[row["machine_id"]][row["day"]] = int(row["added"] or 0)
        made[row["machine_id"]][row["day"]] = row["made"]
    removed: dict = defaultdict(dict)
    for row in (
        points.filter(removed_at__gte=since)
        .annotate(day=TruncDate("removed_at", tzinfo=scope.tz))
        .values("machine_id", "day")
        .annotate(removed=Sum("stored_bytes"))
        .order_by()
    ):
        removed[row["machine_id"]][row["day"]] = int(row["removed"] or 0)

    held: dict = {}
    created_by: dict = {}
    for machine_id in {*opening, *added, *removed}:
        value = int(opening.get(machine_id, {}).get("held") or 0)
        count = opening.get(machine_id, {}).get("made") or 0
        held[machine_id], created_by[machine_id] = {}, {}
        for day in days:
            value += added[machine_id].get(day, 0) - removed[machine_id].get(day, 0)
            count += made[machine_id].get(day, 0)
            held[machine_id][day] = value
            created_by[machine_id][day] = count

    series = _series_by_key(held, days, names, others="Other machines")
    policies = _policies(list(held))
    expectations: list[Expectation] = []
    projected: list[Series] = []
    for line in list(series):
        machine_id = line.key
        if machine_id is None:  # the "Other machines" sum has no single policy
            continue
        in_window = sum(made[machine_id].values())
        average = sum(added[machine_id].values()) // in_window if in_window else None
        policy = policies.get(machine_id)
        reason = ""
        kept = None
        if policy is None:
            reason = "No backup policy"
        elif policy.protection != BackupPolicy.Protection.PROTECTED:
            reason = policy.get_protection_display()
        else:
            kept = points_kept(policy, now=scope.now)
        if average is None and not reason:
            reason = f"No backup in the last {scope.days} days"
        expectation = Expectation(
            machine=line.name,
            points_kept=kept,
            average_added=average,
            stored_now=line.values[-1],
            reason=reason,
        )
        expectations.append(expectation)
        if expectation.expected is not None and kept is not None and average is not None:
            projected.append(
                Series(
                    f"{line.name}, expected",
                    [min(created_by[machine_id][day], kept) * average for day in days],
                    projected=True,
                    color=line.color,
                )
            )
    return (
        Chart(
            slug="machine-storage",
            title="Storage used per machine, against the retention's expected growth",
            kind="lines",
            unit="bytes",
            days=days,
            series=series + projected,
            empty=f"No recovery points in the last {scope.days} days. A machine's storage "
            "appears here after its first backup.",
            note="Solid: bytes the machine's kept recovery points added to storage. Dashed "
            "(expected): min(points made so far, points the policy keeps) × the average bytes "
            f"a backup added in the last {scope.days} days.",
        ),
        expectations,
    )


def report(scope: Scope) -> Report:
    """Every chart of the Reports page for ``scope``."""
    names = {
        m["pk"]: m["name"]
        for m in Machine.objects.filter(vault_id__in=scope.vault_ids).values("pk", "name")
    }
    transferred, duration = backup_activity(scope, names)
    storage, expectations = machine_storage(scope, names)
    charts = [job_outcomes(scope), transferred, duration, storage]
    if scope.machine_id is None:
        charts.insert(3, vault_storage(scope))
    return Report(scope=scope, charts=charts, expectations=expectations)
