"""Backup Alerts: raised and resolved after each job, the daily "no recent backup" check,
and their email (one per alert, or an hourly digest: ``HAVEN_ALERT_EMAIL``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.urls import reverse
from django.utils import timezone

from agents.models import Machine
from jobs import selectors
from jobs.models import Alert, BackupPolicy, Job, WebhookDelivery
from jobs.services import webhooks
from jobs.services.live import alerts_publish
from vaults.selectors import vault_alert_recipients


def alert_raise(
    *, vault, machine=None, job=None, kind: str, severity: str, message: str, now=None
) -> Alert:
    now = now or timezone.now()
    alert = Alert.objects.filter(machine=machine, kind=kind, resolved_at__isnull=True).first()
    if alert is None:
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    vault=vault,
                    machine=machine,
                    job=job,
                    kind=kind,
                    severity=severity,
                    message=message,
                )
        except IntegrityError:
            alert = Alert.objects.get(machine=machine, kind=kind, resolved_at__isnull=True)
        else:
            if settings.HAVEN_ALERT_EMAIL == "each":
                alert_id = alert.pk
                transaction.on_commit(lambda: alert_email_send(alert_ids=[alert_id]))
            webhooks.alert_event(alert=alert, event=WebhookDelivery.Event.RAISED)
            alerts_publish(vault=vault)
            return alert
    Alert.objects.filter(pk=alert.pk).update(
        occurrences=alert.occurrences + 1, last_raised_at=now, message=message, job=job
    )
    alerts_publish(vault=vault)
    return alert


def alerts_resolve(*, machine, kinds: Iterable[str], now=None) -> int:
    now = now or timezone.now()
    # Read first (one query, as the update alone was): the webhooks say which closed.
    closing = list(
        Alert.objects.filter(machine=machine, kind__in=list(kinds), resolved_at__isnull=True)
    )
    if not closing:
        return 0
    count = Alert.objects.filter(
        pk__in=[alert.pk for alert in closing], resolved_at__isnull=True
    ).update(resolved_at=now)
    for alert in closing:
        alert.resolved_at = now
    webhooks.alerts_event(alerts=closing, event=WebhookDelivery.Event.CLOSED)
    if count:
        alerts_publish(vault=machine.vault)
    return count


def alerts_after_job(*, job: Job, now: datetime) -> None:
    if job.machine is None:
        return
    if job.operation == Job.Operation.DRILL:
        _alerts_after_drill(job=job, now=now)
        return
    name = job.machine.name
    if job.operation == Job.Operation.BACKUP:
        if job.status == Job.Status.FAILED:
            alert_raise(
                vault=job.vault,
                machine=job.machine,
                job=job,
                kind=Alert.Kind.BACKUP_FAILED,
                severity=Alert.Severity.CRITICAL,
                message=f"Backup of {name} failed: {job.error or 'no reason given'}",
                now=now,
            )
        elif job.status == Job.Status.WARNING:
            alerts_resolve(
                machine=job.machine,
                kinds=[Alert.Kind.BACKUP_FAILED, Alert.Kind.NO_RECENT_BACKUP],
                now=now,
            )
            alert_raise(
                vault=job.vault,
                machine=job.machine,
                job=job,
                kind=Alert.Kind.BACKUP_WARNINGS,
                severity=Alert.Severity.WARNING,
                message=(
                    f"Backup of {name} completed with {job.warning_count} warning"
                    f"{'s' if job.warning_count != 1 else ''}: some files were skipped."
                ),
                now=now,
            )
        elif job.status == Job.Status.COMPLETED:
            alerts_resolve(
                machine=job.machine,
                kinds=[
                    Alert.Kind.BACKUP_FAILED,
                    Alert.Kind.BACKUP_WARNINGS,
                    Alert.Kind.NO_RECENT_BACKUP,
                ],
                now=now,
            )
    elif job.operation == Job.Operation.RESTORE:
        if job.status == Job.Status.FAILED:
            alert_raise(
                vault=job.vault,
                machine=job.machine,
                job=job,
                kind=Alert.Kind.RESTORE_FAILED,
                severity=Alert.Severity.CRITICAL,
                message=f"Restore on {name} failed: {job.error or 'no reason given'}",
                now=now,
            )
        elif job.status in (Job.Status.COMPLETED, Job.Status.WARNING):
            alerts_resolve(machine=job.machine, kinds=[Alert.Kind.RESTORE_FAILED], now=now)
    elif job.operation == Job.Operation.VERIFY:
        _alerts_after_verify(job=job, name=name, now=now)


def _alerts_after_verify(*, job: Job, name: str, now: datetime) -> None:
    """Damage is Critical; a verify that could not run is a Warning (the data may be fine).
    The damage alert goes only with the Damaged marks (a verify of every pack that finds
    nothing, ``verify_result_record``)."""
    if job.status == Job.Status.FAILED and (job.details or {}).get("damage"):
        alert_raise(
            vault=job.vault,
            machine=job.machine,
            job=job,
            kind=Alert.Kind.VERIFY_DAMAGE,
            severity=Alert.Severity.CRITICAL,
            message=f"Verify of {name} found damaged backup data: {job.error}",
            now=now,
        )
    elif job.status == Job.Status.FAILED:
        alert_raise(
            vault=job.vault,
            machine=job.machine,
            job=job,
            kind=Alert.Kind.VERIFY_FAILED,
            severity=Alert.Severity.WARNING,
            message=f"Verify of {name} did not finish: {job.error or 'no reason given'}",
            now=now,
        )
    elif job.status in (Job.Status.COMPLETED, Job.Status.WARNING):
        kinds = [Alert.Kind.VERIFY_FAILED]
        if not job.machine.recovery_points.filter(verify_damaged_at__isnull=False).exists():
            kinds.append(Alert.Kind.VERIFY_DAMAGE)
        alerts_resolve(machine=job.machine, kinds=kinds, now=now)


def _alerts_after_drill(*, job: Job, now: datetime) -> None:
    """A failed drill raises a Critical alert on the machine whose backups it tried to
    prove (which may not be the one it ran on); a passed drill resolves its alerts."""
    source = Machine.objects.filter(pk=(job.details or {}).get("source_machine")).first()
    if source is None:
        return
    if job.status == Job.Status.FAILED:
        alert_raise(
            vault=job.vault,
            machine=source,
            job=job,
            kind=Alert.Kind.DRILL_FAILED,
            severity=Alert.Severity.CRITICAL,
            message=f"Restore drill of {source.name} failed: {job.error or 'no reason given'}",
            now=now,
        )
    elif job.status == Job.Status.COMPLETED:
        alerts_resolve(
            machine=source, kinds=[Alert.Kind.DRILL_FAILED, Alert.Kind.DRILL_MISSED], now=now
        )


def alerts_check_stale(*, now: datetime | None = None) -> int:
    """Warn about machines with a policy but no successful backup for N days.

    A fixed number of queries however many policies: one finds the stale machines, one
    their open alerts, one counts those again, one creates the rest, and one counts the
    alerts of the vaults concerned, whose summaries are pushed once each.
    """
    now = now or timezone.now()
    days = settings.HAVEN_ALERT_NO_BACKUP_DAYS
    since = now - timedelta(days=days)
    backed_up = Job.objects.filter(
        machine_id=OuterRef("machine_id"),
        operation=Job.Operation.BACKUP,
        status__in=(Job.Status.COMPLETED, Job.Status.WARNING),
        ended_at__gte=since,
    )
    policies = BackupPolicy.objects.select_related("machine", "machine__vault").filter(
        ~Exists(backed_up),
        machine__unregistered_at__isnull=True,
        protection=BackupPolicy.Protection.PROTECTED,
    )
    stale = [
        policy.machine
        for policy in policies
        # Newer than N days: too new to judge.
        if min(policy.scheduled_through or now, policy.machine.registered_at or now) <= since
    ]
    if not stale:
        return 0
    try:
        with transaction.atomic():
            _raise_no_recent_backup(stale, days=days, now=now)
    except IntegrityError:
        # A concurrent check raised some of these first: one at a time, as alert_raise
        # counts an alert that is already open.
        for machine in stale:
            alert_raise(
                vault=machine.vault,
                machine=machine,
                kind=Alert.Kind.NO_RECENT_BACKUP,
                severity=Alert.Severity.WARNING,
                message=_no_recent_backup_message(machine, days),
                now=now,
            )
    return len(stale)


def _no_recent_backup_message(machine, days: int) -> str:
    return f"{machine.name} has had no successful backup for {days} days."


def _raise_no_recent_backup(machines: list, *, days: int, now: datetime) -> None:
    """alert_raise for many machines at once: count open alerts again, create the rest."""
    kind = Alert.Kind.NO_RECENT_BACKUP
    open_alerts = {
        alert.machine_id: alert
        for alert in Alert.objects.filter(machine__in=machines, kind=kind, resolved_at__isnull=True)
    }
    again, new = [], []
    for machine in machines:
        message = _no_recent_backup_message(machine, days)
        alert = open_alerts.get(machine.pk)
        if alert is None:
            new.append(
                Alert(
                    vault=machine.vault,
                    machine=machine,
                    kind=kind,
                    severity=Alert.Severity.WARNING,
                    message=message,
                )
            )
            continue
        alert.occurrences += 1
        alert.last_raised_at = now
        alert.message = message
        alert.job = None
        again.append(alert)
    if again:
        Alert.objects.bulk_update(again, ["occurrences", "last_raised_at", "message", "job"])
    if new:
        created = Alert.objects.bulk_create(new)
        webhooks.alerts_event(alerts=created, event=WebhookDelivery.Event.RAISED)
        if settings.HAVEN_ALERT_EMAIL == "each":
            alert_ids = [alert.pk for alert in created]
            transaction.on_commit(lambda: alert_email_send(alert_ids=alert_ids))
    vaults = {machine.vault_id: machine.vault for machine in machines}
    counts = selectors.alert_counts_by_vault(list(vaults))
    for vault_id, vault in vaults.items():
        alerts_publish(vault=vault, counts=counts[vault_id])


def _alert_recipients(vault) -> list[str]:
    return vault_alert_recipients(vault)


def alert_email_send(*, alert_ids: list[int]) -> int:
    """One email per alert to the vault's Owners, Contributors and Backup Operators."""
    sent = 0
    for alert in Alert.objects.filter(pk__in=alert_ids, notified_at__isnull=True).select_related(
        "vault", "machine"
    ):
        recipients = _alert_recipients(alert.vault)
        if recipients:
            send_mail(
                subject=f"[Haven] {alert.get_severity_display()}: {alert.get_kind_display()} "
                f"on {alert.machine or alert.vault}",
                message=_alert_text(alert, settings.HAVEN_PUBLIC_URL),
                from_email=None,
                recipient_list=recipients,
            )
            sent += 1
        Alert.objects.filter(pk=alert.pk).update(notified_at=timezone.now())
    return sent


def alerts_send_digest(*, now: datetime | None = None) -> int:
    """Hourly: one email per recipient listing the alerts raised since the last digest."""
    if settings.HAVEN_ALERT_EMAIL != "digest":
        return 0
    pending = list(
        Alert.objects.filter(notified_at__isnull=True).select_related("vault", "machine")
    )
    by_recipient: dict[str, list[Alert]] = {}
    for alert in pending:
        for email in _alert_recipients(alert.vault):
            by_recipient.setdefault(email, []).append(alert)
    for email, alerts in by_recipient.items():
        body = "\n\n".join(_alert_text(a, settings.HAVEN_PUBLIC_URL) for a in alerts)
        send_mail(
            subject=f"[Haven] {len(alerts)} backup alert{'s' if len(alerts) != 1 else ''}",
            message=body,
            from_email=None,
            recipient_list=[email],
        )
    Alert.objects.filter(pk__in=[a.pk for a in pending]).update(notified_at=now or timezone.now())
    return len(by_recipient)


def _alert_text(alert: Alert, base_url: str) -> str:
    link = base_url + reverse("jobs:vault_alerts", args=[alert.vault_id])
    return (
        f"{alert.get_severity_display()} — {alert.get_kind_display()}\n"
        f"Vault: {alert.vault}\nMachine: {alert.machine or '—'}\n"
        f"{alert.message}\n\nBackup Alerts: {link}"
    )
