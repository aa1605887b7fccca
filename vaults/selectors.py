"""Reads about vaults: lists, overview counts, what blocks a deletion, what locks redundancy.

Some of these facts belong to apps built later (jobs: protected items, recovery points,
jobs, alerts, soft-deleted data). They plug in through the hooks below, registered from
their ``AppConfig.ready()``; until then the overview shows machines only and zeros:

- ``register_overview_counter(fn)``: ``fn(vault) -> dict`` merged into the overview counts
  (keys ``protected_items``, ``jobs_24h`` — a dict status -> count — and ``active_alerts``).
- ``register_delete_blocker(fn)``: ``fn(vault) -> list[DeleteBlocker]`` (recovery points,
  soft-deleted items, …).
- ``register_protection_check(fn)``: ``fn(vault) -> str | None``, the reason the storage
  redundancy can no longer change (e.g. "3 recovery points exist"), or None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

from django.core.paginator import Page, Paginator
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from portal import access
from portal.models import Membership, Role
from vaults.models import Vault, VaultUsageSample


@dataclass(frozen=True)
class DeleteBlocker:
    """One reason a vault cannot be deleted yet, with what to do about it."""

    what: str  # "2 registered machines"
    action: str  # "Unregister them under Machines."
    link_url: str = ""


OverviewCounter = Callable[[Vault], dict]
DeleteBlockerCheck = Callable[[Vault], list[DeleteBlocker]]
ProtectionCheck = Callable[[Vault], str | None]

_overview_counters: list[OverviewCounter] = []
_delete_blockers: list[DeleteBlockerCheck] = []
_protection_checks: list[ProtectionCheck] = []
# The jobs app reads how far a geo-redundant vault's copy is (jobs.selectors).
_replication_readers: list[Callable[[Vault], dict | None]] = []


def register_replication_reader(fn: Callable[[Vault], dict | None]) -> None:
    if fn not in _replication_readers:
        _replication_readers.append(fn)


def vault_replication(vault: Vault) -> dict | None:
    """The replication card of a geo-redundant vault's overview (None for other vaults):
    the secondary's state as the worker last found it, and the lag its readers report."""
    if vault.redundancy != Vault.Redundancy.GEO:
        return None
    from vaults import storage

    secondary = storage.secondary_account() if vault.secondary_container else None
    info: dict = {
        "configured": secondary is not None,
        "unavailable_reason": storage.secondary_unavailable_reason() if secondary is None else "",
        "secondary": secondary.describe() if secondary is not None else "",
        "checked_at": vault.secondary_checked_at,
        "error": vault.secondary_error,
        "machines": [],
        "lag": None,
        "pending_blobs": 0,
        "pending_bytes": 0,
    }
    for reader in _replication_readers:
        info.update(reader(vault) or {})
    return info


def register_overview_counter(fn: OverviewCounter) -> None:
    if fn not in _overview_counters:
        _overview_counters.append(fn)


def register_delete_blocker(fn: DeleteBlockerCheck) -> None:
    if fn not in _delete_blockers:
        _delete_blockers.append(fn)


def register_protection_check(fn: ProtectionCheck) -> None:
    if fn not in _protection_checks:
        _protection_checks.append(fn)


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


# --- lists ------------------------------------------------------------------------------
SORTS = {
    "name": ("name_lower",),
    "subscription": ("subscription__name", "name_lower"),
    "resource_group": ("resource_group__name", "name_lower"),
    "location": ("location", "name_lower"),
    "state": ("state", "name_lower"),
}


def vault_list(
    *,
    user,
    q: str = "",
    subscription_id: str = "",
    resource_group: str = "",
    location: str = "",
    sort: str = "name",
) -> QuerySet[Vault]:
    """The vaults ``user`` may see, filtered and sorted (``-name`` sorts descending)."""
    from django.db.models.functions import Lower

    qs = access.for_user(user, Vault).select_related("subscription", "resource_group")
    if q:
        qs = qs.filter(name__icontains=q.strip())
    if subscription_id:
        qs = qs.filter(subscription_id=subscription_id)
    if resource_group:
        qs = qs.filter(resource_group__name__iexact=resource_group)
    if location:
        qs = qs.filter(location=location)
    descending = sort.startswith("-")
    key = sort.lstrip("-")
    fields = SORTS.get(key, SORTS["name"])
    qs = qs.annotate(name_lower=Lower("name"))
    return qs.order_by(*[f"-{f}" if descending else f for f in fields])


# --- overview ---------------------------------------------------------------------------
JOB_STATUSES = ("in_progress", "succeeded", "warning", "failed")


def vault_overview_counts(vault: Vault) -> dict:
    """The overview tiles. Machines are counted here; the jobs app adds the rest."""
    counts: dict = {
        "machines": vault.machines.filter(unregistered_at__isnull=True).count(),
        "protected_items": 0,
        "jobs_24h": dict.fromkeys(JOB_STATUSES, 0),
        "active_alerts": 0,
    }
    for counter in _overview_counters:
        extra = counter(vault) or {}
        if "jobs_24h" in extra:
            counts["jobs_24h"] = {**counts["jobs_24h"], **extra.pop("jobs_24h")}
        counts.update(extra)
    return counts


def vault_usage_samples(vault: Vault, *, days: int = 30) -> list[VaultUsageSample]:
    """Samples of the last ``days`` days, plus the one just before (the chart's left edge)."""
    since = timezone.now() - timedelta(days=days)
    recent = list(vault.usage_samples.filter(taken_at__gte=since).order_by("taken_at"))
    before = vault.usage_samples.filter(taken_at__lt=since).order_by("-taken_at").first()
    return ([before] if before else []) + recent


def vault_current_usage(vault: Vault) -> int | None:
    last = vault.usage_samples.order_by("-taken_at").first()
    return last.bytes_used if last else None


# --- rules that depend on what the vault holds -----------------------------------------
def _machines_blocker(vault: Vault) -> list[DeleteBlocker]:
    count = vault.machines.filter(unregistered_at__isnull=True).count()
    if not count:
        return []
    return [
        DeleteBlocker(
            what=_plural(count, "registered machine"),
            action="Unregister each machine from the vault first (Machines › Unregister).",
            link_url=f"/machines/?vault={vault.pk}",
        )
    ]


def vault_delete_blockers(vault: Vault) -> list[DeleteBlocker]:
    """Everything that must go before ``vault`` can be deleted; empty when nothing blocks."""
    blockers = _machines_blocker(vault)
    for check in _delete_blockers:
        blockers.extend(check(vault) or [])
    return blockers


def vault_redundancy_locked_reason(vault: Vault) -> str | None:
    """Why the storage replication type (redundancy) can no longer change, or None while it still can.

    The rule is "until the first item is protected". Until the jobs app reports recovery
    points, a registered machine counts as protected: its first backup may start at any time.
    """
    for check in _protection_checks:
        reason = check(vault)
        if reason:
            return reason
    count = vault.machines.filter(unregistered_at__isnull=True).count()
    if count:
        return (
            f"The vault already protects {_plural(count, 'registered machine')}. The "
            "storage replication type can only be changed before the first item is protected; "
            "to use another one, create a new vault."
        )
    if vault.state != Vault.State.READY:
        return "The vault is not deployed yet."
    return None


def vaults_with_machine_counts(qs: QuerySet[Vault]) -> QuerySet[Vault]:
    return qs.annotate(
        machine_count=Count("machines", filter=Q(machines__unregistered_at__isnull=True))
    )


# --- activity log -----------------------------------------------------------------------
ACTIVITY_PAGE_SIZE = 50
ACTIVITY_RANGES = {
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
    "90d": ("Last 90 days", timedelta(days=90)),
    "all": ("All time", None),
}
ACTIVITY_DEFAULT_RANGE = "30d"
# The user picker lists at most this many names (the most recent first).
ACTIVITY_USER_CHOICES = 200


@dataclass
class ActivityFilters:
    """The activity log's filters, read from a query string; a value that cannot be one is
    dropped (an unknown operation, a malformed date), never an error."""

    operation: str = ""
    user: str = ""
    outcome: str = ""
    range: str = ACTIVITY_DEFAULT_RANGE
    start: date | None = None
    end: date | None = None

    @classmethod
    def from_query(cls, query) -> ActivityFilters:
        from vaults.models import ActivityEntry

        operation = query.get("operation", "")
        outcome = query.get("outcome", "")
        chosen = query.get("range", ACTIVITY_DEFAULT_RANGE)
        filters = cls(
            operation=operation if operation in ActivityEntry.Operation.values else "",
            user=query.get("user", "")[:150],
            outcome=outcome if outcome in ActivityEntry.Outcome.values else "",
            range=chosen if chosen in (*ACTIVITY_RANGES, "custom") else ACTIVITY_DEFAULT_RANGE,
        )
        if filters.range == "custom":
            filters.start = _day(query.get("start"))
            filters.end = _day(query.get("end"))
        return filters

    def as_query(self, **override) -> str:
        values = {
            "operation": self.operation,
            "user": self.user,
            "outcome": self.outcome,
            "range": self.range,
            "start": self.start.isoformat() if self.start else "",
            "end": self.end.isoformat() if self.end else "",
        }
        values.update(override)
        return urlencode({k: v for k, v in values.items() if v})

    @property
    def end_day(self) -> date | None:
        """The last day the custom range includes (the To box)."""
        return self.end


def _day(value) -> date | None:
    try:
        return date.fromisoformat(str(value or "")[:10])
    except ValueError:
        return None


def activity_scope(*, vault_id=None, subscription_id=None) -> QuerySet:
    """Every entry of one vault (kept after the vault is gone) or of one subscription."""
    from vaults.models import ActivityEntry

    if vault_id is not None:
        return ActivityEntry.objects.filter(vault_id=vault_id)
    return ActivityEntry.objects.filter(subscription_id=subscription_id)


def activity_filtered(scope: QuerySet, filters: ActivityFilters, *, now=None) -> QuerySet:
    """The entries of ``scope`` that pass ``filters``, newest first."""
    now = now or timezone.now()
    qs = scope
    if filters.operation:
        qs = qs.filter(operation=filters.operation)
    if filters.user:
        qs = qs.filter(username=filters.user)
    if filters.outcome:
        qs = qs.filter(outcome=filters.outcome)
    span = ACTIVITY_RANGES.get(filters.range, (None, None))[1]
    if span is not None:
        qs = qs.filter(at__gte=now - span)
    if filters.range == "custom":
        tz = timezone.get_current_timezone()
        if filters.start:
            qs = qs.filter(at__gte=datetime.combine(filters.start, time.min, tzinfo=tz))
        if filters.end:
            end = datetime.combine(filters.end + timedelta(days=1), time.min, tzinfo=tz)
            qs = qs.filter(at__lt=end)
    return qs.order_by("-at", "-id")


def activity_usernames(scope: QuerySet) -> list[str]:
    """The names in ``scope``, for the user filter (one query)."""
    names = (
        scope.exclude(username="")
        .order_by()
        .values_list("username", flat=True)
        .distinct()[:ACTIVITY_USER_CHOICES]
    )
    return sorted(names, key=str.lower)


def activity_operations(scope: QuerySet) -> list[tuple[str, str]]:
    """The operations ``scope`` holds, as (value, label) in the enum's order, for the
    operation filter (one query): it offers only what the log can show."""
    from vaults.models import ActivityEntry

    present = set(scope.order_by().values_list("operation", flat=True).distinct())
    return [(v, label) for v, label in ActivityEntry.Operation.choices if v in present]


def signin_pauses() -> QuerySet:
    """Every *Sign-in paused after failures* entry of the portal, whichever subscription it
    is in or none (a name with no account, an account in no subscription, guessed access
    tokens), with the subscription's name (one query with the page's rows)."""
    from vaults.models import ActivityEntry

    return ActivityEntry.objects.filter(
        operation=ActivityEntry.Operation.SIGNIN_LOCKOUT
    ).select_related("subscription")


def activity_page(qs: QuerySet, page) -> Page:
    """One page of entries: two queries (the count and the rows) whatever the page size."""
    return Paginator(qs, ACTIVITY_PAGE_SIZE).get_page(page)


def activity_batches(qs: QuerySet, *, size: int = 500):
    """``qs`` (ordered newest first) in lists of ``size``, by keyset: each batch is one query
    that starts after the last row of the one before, so an export of any length holds one
    batch in memory and never skips or repeats a row written meanwhile."""
    after = None
    while True:
        batch = activity_batch(qs, after=after, size=size)
        if not batch:
            return
        yield batch
        after = (batch[-1].at, batch[-1].pk)


def activity_batch(qs: QuerySet, *, after=None, size: int = 500) -> list:
    if after is not None:
        at, pk = after
        qs = qs.filter(Q(at__lt=at) | Q(at=at, pk__lt=pk))
    return list(qs[:size])


def vault_alert_recipients(vault: Vault) -> list[str]:
    """Who is emailed about the vault's alerts and critical operations: the e-mail
    addresses of its subscription's Owners, Contributors and Backup Operators."""
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
