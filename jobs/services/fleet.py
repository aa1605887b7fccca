"""The Backup center: every machine and alert of the vaults a user can see, by state, with
filters and CSV export (reads), and an alert's Acknowledge and Close (writes, kept in the
activity log and sent to the vault's webhooks). docs/monitoring.md says what each state means.

The reads are a fixed number of queries however many machines, alerts and vaults: the
machines with their last backup and open alerts annotated (one), the last proven restore of
each (one), the alerts (one), the vaults for the filter (one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q, QuerySet, Subquery
from django.db.models.fields.json import KT
from django.http import QueryDict
from django.utils import timezone

from agents.models import Machine
from jobs.models import Alert, BackupPolicy, Job, WebhookDelivery
from jobs.services import webhooks
from jobs.services.live import alerts_publish
from portal import live
from portal.access import for_user, subscriptions_with_role
from portal.models import Membership, Role
from vaults import activity
from vaults.activity import Operation, csv_safe
from vaults.models import Vault

ALERTS_SHOWN = 500


class MachineState:
    PROTECTED = "protected"
    WARNING = "warning"
    FAILED = "failed"
    OFFLINE = "offline"
    STOPPED = "stopped"

    choices = [
        (PROTECTED, "Protected"),
        (WARNING, "Warning"),
        (FAILED, "Failed"),
        (OFFLINE, "Offline"),
        (STOPPED, "Stopped"),
    ]
    labels = dict(choices)
    classes = {
        PROTECTED: "status-ok",
        WARNING: "status-warning",
        FAILED: "status-error",
        OFFLINE: "status-error",
        STOPPED: "status-muted",
    }


ALERT_SHOW = {
    "open": "Open (active and acknowledged)",
    Alert.State.ACTIVE: "Active",
    Alert.State.ACKNOWLEDGED: "Acknowledged",
    Alert.State.CLOSED: "Closed",
    "all": "All",
}


class AlertClosed(Exception):
    """Acknowledge or Close of an alert that is already closed."""


# Who may Acknowledge and Close an alert, on the page and through the API (docs/monitoring.md).
ALERT_ACTION_ROLE = Role.BACKUP_OPERATOR


def require_alert_action(request, alert: Alert, operation: str) -> None:
    """Acknowledge and Close need ``ALERT_ACTION_ROLE`` on the alert's vault (the page's
    buttons and the API alike): a lower role is refused 403 and logged as refused."""
    activity.require_role(
        request,
        vault=alert.vault,
        role=ALERT_ACTION_ROLE,
        operation=operation,
        resource=activity.Resource("alert", str(alert.pk), str(alert.get_kind_display())),
    )


# The request header of the Backup center's live refresh (static/js/fleet.js reads its name
# from the filter form): the answer replaces the address when the filters differ from its.
REFRESH_HEADER = "X-Haven-Refresh"


@dataclass
class Filters:
    vault: str = ""
    state: str = ""
    severity: str = ""
    show: str = "open"
    q: str = ""
    errors: dict = field(default_factory=dict)
    vault_ids: frozenset[str] = field(default=frozenset(), repr=False)  # (those visible)

    @classmethod
    def from_query(cls, params, vault_ids: set[str]) -> Filters:
        """Unknown values are dropped (and said so) rather than refused: a stale bookmark
        still opens the page."""
        found = cls(vault_ids=frozenset(vault_ids))
        errors = {}
        vault = params.get("vault", "")
        if vault and vault not in vault_ids:
            errors["vault"] = "No such vault among those you can see; showing all vaults."
            vault = ""
        found.vault = vault
        state = params.get("state", "")
        found.state = state if state in MachineState.labels else ""
        severity = params.get("severity", "")
        found.severity = severity if severity in Alert.Severity.values else ""
        show = params.get("show", "open")
        found.show = show if show in ALERT_SHOW else "open"
        found.q = params.get("q", "").strip()[:100]
        found.errors = errors
        return found

    def differ_from(self, url: str | None) -> bool:
        """Whether the page at ``url`` (a live refresh's ``HX-Current-URL``) shows other
        filters than these, read as the portal reads them (defaults filled in)."""
        shown = Filters.from_query(QueryDict(urlsplit(url or "").query), self.vault_ids)
        return shown.query() != self.query()

    def query(self, **override) -> str:
        values = {
            "vault": self.vault,
            "state": self.state,
            "severity": self.severity,
            "show": self.show,
            "q": self.q,
        }
        values.update(override)
        return urlencode({k: v for k, v in values.items() if v})


@dataclass
class MachineRow:
    machine: Machine
    state: str
    reason: str
    last_backup_status: str | None
    last_backup_at: datetime | None
    last_backup_job_id: object
    last_proven_at: datetime | None

    @property
    def state_label(self) -> str:
        return MachineState.labels[self.state]

    @property
    def state_class(self) -> str:
        return MachineState.classes[self.state]

    @property
    def last_backup_label(self) -> str:
        if self.last_backup_status is None:
            return "No backup yet"
        return Job.Status(self.last_backup_status).label


def fleet_subscriptions(user) -> list:
    """The ids of the subscriptions whose changes the user's Backup center hears live (a
    socket watches at most ``live.MAX_WATCHES`` groups: an administrator of more
    subscriptions than that hears the first by name, and the rest on Refresh)."""
    return list(
        subscriptions_with_role(user, Role.READER)
        .order_by("name")
        .values_list("pk", flat=True)[: live.MAX_WATCHES]
    )


def visible_vaults(user) -> list[Vault]:
    return list(for_user(user, Vault).order_by("name").only("id", "name", "subscription_id"))


def vaults_with_role(user, vaults: list[Vault], role: str) -> set[str]:
    """The ids (as text) of ``vaults`` where the user holds ``role`` or higher: one query
    however many subscriptions they span."""
    if user.is_superuser:
        return {str(v.pk) for v in vaults}
    allowed = [r for r in Role.values if Role.rank(r) >= Role.rank(role)]
    subscriptions = set(
        Membership.objects.filter(user=user, role__in=allowed).values_list(
            "subscription_id", flat=True
        )
    )
    return {str(v.pk) for v in vaults if v.subscription_id in subscriptions}


def _machines(user, filters: Filters) -> QuerySet[Machine]:
    last_backup = Job.objects.filter(
        machine=OuterRef("pk"), operation=Job.Operation.BACKUP
    ).order_by("-created_at")
    open_alerts = Alert.objects.filter(machine=OuterRef("pk"), resolved_at__isnull=True)
    qs = (
        for_user(user, Machine)
        .filter(unregistered_at__isnull=True)
        .select_related("vault", "backup_policy")
        .annotate(
            last_job_id=Subquery(last_backup.values("id")[:1]),
            last_job_status=Subquery(last_backup.values("status")[:1]),
            last_job_at=Subquery(last_backup.values("created_at")[:1]),
            critical_open=Exists(open_alerts.filter(severity=Alert.Severity.CRITICAL)),
            warning_open=Exists(open_alerts.filter(severity=Alert.Severity.WARNING)),
        )
        .order_by("vault__name", "name")
    )
    if filters.vault:
        qs = qs.filter(vault_id=filters.vault)
    if filters.q:
        qs = qs.filter(Q(name__icontains=filters.q) | Q(hostname__icontains=filters.q))
    return qs


def _last_proven(vault_ids) -> dict[str, datetime]:
    """When each machine's backups were last proven restorable by a drill, keyed by the
    machine id as text (drills name their source in ``details``)."""
    rows = (
        Job.objects.filter(
            vault_id__in=vault_ids, operation=Job.Operation.DRILL, status=Job.Status.COMPLETED
        )
        .values(source=KT("details__source_machine"))
        .annotate(last=Max("ended_at"))
        .order_by()
    )
    return {str(row["source"]): row["last"] for row in rows if row["source"]}


def machine_state(machine: Machine, *, now: datetime) -> tuple[str, str]:
    """The machine's Backup center state and why, the most urgent first: a deliberate stop,
    a failure, no heartbeat, anything short of a clean last backup, else protected."""
    policy = getattr(machine, "backup_policy", None)
    if policy is not None and policy.protection != BackupPolicy.Protection.PROTECTED:
        return MachineState.STOPPED, BackupPolicy.Protection(policy.protection).label
    if machine.last_job_status == Job.Status.FAILED:
        return MachineState.FAILED, "The last backup failed."
    if machine.critical_open:
        return MachineState.FAILED, "A critical alert is open."
    if not machine.is_online(now):
        return MachineState.OFFLINE, "No heartbeat from the agent."
    if policy is None:
        return MachineState.WARNING, "No backup policy: nothing is backed up."
    if machine.last_job_status is None:
        return MachineState.WARNING, "No backup has run yet."
    if machine.last_job_status == Job.Status.WARNING:
        return MachineState.WARNING, "The last backup skipped some files."
    if machine.warning_open:
        return MachineState.WARNING, "A warning alert is open."
    return MachineState.PROTECTED, "The last backup succeeded."


def fleet_machines(user, filters: Filters, *, now: datetime | None = None) -> dict:
    """The visible machines (filtered by vault and name) as rows, the counts by state of
    those, and the rows of the chosen state."""
    now = now or timezone.now()
    machines = list(_machines(user, filters))
    proven = _last_proven({m.vault_id for m in machines}) if machines else {}
    rows = []
    for machine in machines:
        state, reason = machine_state(machine, now=now)
        rows.append(
            MachineRow(
                machine=machine,
                state=state,
                reason=reason,
                last_backup_status=machine.last_job_status,
                last_backup_at=machine.last_job_at,
                last_backup_job_id=machine.last_job_id,
                last_proven_at=proven.get(str(machine.pk)),
            )
        )
    counts = {value: 0 for value, _ in MachineState.choices}
    for row in rows:
        counts[row.state] += 1
    shown = [row for row in rows if not filters.state or row.state == filters.state]
    tiles = [(value, label, counts[value]) for value, label in MachineState.choices]
    return {"rows": shown, "counts": counts, "tiles": tiles, "total": len(rows)}


def fleet_alerts(user, filters: Filters, *, limit: int | None = ALERTS_SHOWN) -> list[Alert]:
    qs = for_user(user, Alert).select_related("vault", "machine", "acknowledged_by", "closed_by")
    if filters.vault:
        qs = qs.filter(vault_id=filters.vault)
    if filters.severity:
        qs = qs.filter(severity=filters.severity)
    if filters.q:
        qs = qs.filter(Q(machine__name__icontains=filters.q) | Q(message__icontains=filters.q))
    if filters.show == "open":
        qs = qs.filter(resolved_at__isnull=True)
    elif filters.show == Alert.State.ACTIVE:
        qs = qs.filter(resolved_at__isnull=True, acknowledged_at__isnull=True)
    elif filters.show == Alert.State.ACKNOWLEDGED:
        qs = qs.filter(resolved_at__isnull=True, acknowledged_at__isnull=False)
    elif filters.show == Alert.State.CLOSED:
        qs = qs.filter(resolved_at__isnull=False)
    qs = qs.order_by("-last_raised_at", "-id")
    return list(qs[:limit] if limit else qs)


# --- CSV ------------------------------------------------------------------------------------
MACHINES_CSV_HEADER = [
    "Vault",
    "Machine",
    "Host name",
    "State",
    "Why",
    "Last backup",
    "Last backup time (UTC)",
    "Last proven restore (UTC)",
]
ALERTS_CSV_HEADER = [
    "Vault",
    "Machine",
    "Severity",
    "Alert",
    "State",
    "Details",
    "Raised (UTC)",
    "Last raised (UTC)",
    "Count",
    "Acknowledged by",
    "Acknowledged (UTC)",
    "Closed by",
    "Closed (UTC)",
]


def _utc(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def machines_csv_rows(rows: list[MachineRow]):
    yield MACHINES_CSV_HEADER
    for row in rows:
        cells = [
            row.machine.vault.name,
            row.machine.name,
            row.machine.hostname,
            row.state_label,
            row.reason,
            row.last_backup_label,
            _utc(row.last_backup_at),
            _utc(row.last_proven_at),
        ]
        yield [csv_safe(cell) for cell in cells]


def alerts_csv_rows(alerts: list[Alert]):
    yield ALERTS_CSV_HEADER
    for alert in alerts:
        closer = ""
        if alert.resolved_at:
            closer = alert.closed_by.get_username() if alert.closed_by else "the portal"
        cells = [
            alert.vault.name,
            alert.machine.name if alert.machine else "",
            alert.get_severity_display(),
            alert.get_kind_display(),
            alert.get_state_display(),
            alert.message,
            _utc(alert.raised_at),
            _utc(alert.last_raised_at),
            str(alert.occurrences),
            alert.acknowledged_by.get_username() if alert.acknowledged_by else "",
            _utc(alert.acknowledged_at),
            closer,
            _utc(alert.resolved_at),
        ]
        yield [csv_safe(cell) for cell in cells]


# --- Acknowledge and Close -----------------------------------------------------------------
def alert_acknowledge(*, alert: Alert, user, now: datetime | None = None) -> bool:
    """Someone is on it: the alert stays open (and stays acknowledged when raised again)
    until its condition clears or someone closes it. False when it already was."""
    now = now or timezone.now()
    if alert.resolved_at is not None:
        raise AlertClosed("This alert is closed; there is nothing to acknowledge.")
    with transaction.atomic():
        changed = Alert.objects.filter(
            pk=alert.pk, resolved_at__isnull=True, acknowledged_at__isnull=True
        ).update(acknowledged_at=now, acknowledged_by=user)
        if not changed:
            alert.refresh_from_db()
            if alert.resolved_at is not None:
                raise AlertClosed("This alert was closed meanwhile.")
            return False
        alert.acknowledged_at, alert.acknowledged_by = now, user
        _record(alert, user, Operation.ALERT_ACKNOWLEDGE)
        webhooks.alert_event(alert=alert, event=WebhookDelivery.Event.ACKNOWLEDGED)
    alerts_publish(vault=alert.vault)
    return True


def alert_close(*, alert: Alert, user, now: datetime | None = None) -> bool:
    """Closed by a person: the alert leaves the open list now; if its condition happens
    again, a new alert is raised. False when it was already closed."""
    now = now or timezone.now()
    with transaction.atomic():
        changed = Alert.objects.filter(pk=alert.pk, resolved_at__isnull=True).update(
            resolved_at=now, closed_by=user
        )
        if not changed:
            return False
        alert.resolved_at, alert.closed_by = now, user
        _record(alert, user, Operation.ALERT_CLOSE)
        webhooks.alert_event(alert=alert, event=WebhookDelivery.Event.CLOSED)
    alerts_publish(vault=alert.vault)
    return True


def _record(alert: Alert, user, operation: str) -> None:
    activity.record(
        operation=operation,
        user=user,
        vault=alert.vault,
        resource=activity.Resource(
            "alert", str(alert.pk), f"{alert.get_kind_display()} on {alert.machine or '—'}"
        ),
        detail={"severity": alert.severity, "kind": alert.kind},
    )
