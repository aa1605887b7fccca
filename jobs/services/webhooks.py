"""Alert webhooks: a vault's alert events (raised, acknowledged, closed) POSTed to the URLs
its Contributors configured, as generic JSON, a Slack-compatible ``{"text": ...}`` or a
Microsoft Teams MessageCard (docs/monitoring.md).

The same outbox as the agents' messages (``agents.dispatch``): the event's rows
(``WebhookDelivery``) are written in the transaction that changed the alert, so the request
that raised or acknowledged it never waits on a receiver; after commit the portal worker
sends them (``webhooks_send``), and its periodic pass (``webhooks_send_due``) retries the
failed ones with exponential backoff, up to ``MAX_ATTEMPTS``. Each try is kept on the row.
Where a webhook may POST (public addresses unless an admin allows a network) is
``jobs.services.egress``'s to say, when the webhook is saved and at every send.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from agents import dispatch
from jobs import tasks
from jobs.models import Alert, Webhook, WebhookDelivery
from jobs.services import egress
from vaults import activity
from vaults.activity import Operation

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
BACKOFF_FIRST = timedelta(seconds=30)
TIMEOUT_SECONDS = 10
# A person waits on Send test: one short try there, the worker retries the rest.
TEST_TIMEOUT_SECONDS = 5
BATCH = 100
KEEP = timedelta(days=30)
SIGNATURE_HEADER = "X-Haven-Signature"
EVENT_HEADER = "X-Haven-Event"
DELIVERY_HEADER = "X-Haven-Delivery"
SECRET_MAX = 200
WEBHOOKS_PER_VAULT = 10


class WebhookInvalid(ValidationError):
    """A webhook's fields were refused; ``message_dict`` names the field."""


# --- configuration ------------------------------------------------------------------------
def webhook_validate(*, name: str, url: str, format: str, secret: str) -> dict:
    """The cleaned fields, or WebhookInvalid with a message per field."""
    errors: dict[str, list[str]] = {}
    name = (name or "").strip()
    url = (url or "").strip()
    secret = secret or ""
    if not name:
        errors["name"] = ["Give the webhook a name."]
    elif len(name) > 80:
        errors["name"] = ["Use at most 80 characters."]
    url_error = _url_problem(url)
    if url_error:
        errors["url"] = [url_error]
    if format not in Webhook.Format.values:
        errors["format"] = ["Choose one of the formats offered."]
    if len(secret) > SECRET_MAX:
        errors["secret"] = [f"Use at most {SECRET_MAX} characters."]
    if errors:
        raise WebhookInvalid(errors)
    return {"name": name, "url": url, "format": format, "secret": secret}


def _url_problem(url: str) -> str:
    if not url:
        return "Enter the URL the portal should POST to."
    if len(url) > 500:
        return "Use at most 500 characters."
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "This is not a URL."
    if parts.scheme.lower() not in ("http", "https"):
        return "Only http:// and https:// URLs are allowed."
    if not parts.hostname:
        return "The URL has no host name."
    if parts.username or parts.password:
        return "Put no user name or password in the URL; use the signing secret instead."
    if any(c.isspace() for c in url):
        return "The URL contains spaces."
    return egress.url_problem(url)


def webhook_add(*, vault, user, name: str, url: str, format: str, secret: str = "") -> Webhook:
    fields = webhook_validate(name=name, url=url, format=format, secret=secret)
    if Webhook.objects.filter(vault=vault).count() >= WEBHOOKS_PER_VAULT:
        raise WebhookInvalid({"name": [f"A vault has at most {WEBHOOKS_PER_VAULT} webhooks."]})
    with transaction.atomic():
        hook = Webhook.objects.create(vault=vault, created_by=user, **fields)
        activity.record(
            operation=Operation.WEBHOOK_ADD,
            user=user,
            vault=vault,
            resource=hook,
            # The host only: a chat tool's URL is its credential, and Readers see the log.
            detail={"host": hook.host, "format": hook.format, "signed": bool(hook.secret)},
        )
    return hook


def webhook_delete(*, webhook: Webhook, user) -> None:
    with transaction.atomic():
        activity.record(
            operation=Operation.WEBHOOK_DELETE,
            user=user,
            vault=webhook.vault,
            resource=webhook,
            detail={"host": webhook.host},
        )
        webhook.delete()


# --- the events -----------------------------------------------------------------------------
def alert_event(*, alert: Alert, event: str) -> list[int]:
    """Queue ``event`` of ``alert`` for each webhook of its vault (in the caller's
    transaction); the worker sends them after commit. Returns the delivery ids."""
    return alerts_event(alerts=[alert], event=event)


def alerts_event(*, alerts: list[Alert], event: str) -> list[int]:
    """``alert_event`` for many alerts: two queries, however many alerts and webhooks."""
    if not alerts:
        return []
    hooks: dict = {}
    for hook in Webhook.objects.filter(vault_id__in={a.vault_id for a in alerts}).select_related(
        "vault"
    ):
        hooks.setdefault(hook.vault_id, []).append(hook)
    if not hooks:
        return []
    rows = [
        WebhookDelivery(webhook=hook, alert=alert, event=event, body=_body(hook, alert, event))
        for alert in alerts
        for hook in hooks.get(alert.vault_id, [])
    ]
    ids = [row.pk for row in WebhookDelivery.objects.bulk_create(rows)]
    if any(pk is None for pk in ids):  # a backend that returns no ids: the periodic pass
        return []
    transaction.on_commit(lambda: _send_soon(ids))
    return ids


def webhook_test(*, webhook: Webhook, user) -> WebhookDelivery:
    """Send test: one try now, while the person waits; the worker retries a failure."""
    body = _body(webhook, None, WebhookDelivery.Event.TEST, user=user)
    row = WebhookDelivery.objects.create(
        webhook=webhook, event=WebhookDelivery.Event.TEST, body=body
    )
    _attempt(row, now=timezone.now(), timeout=TEST_TIMEOUT_SECONDS)
    row.refresh_from_db()
    return row


def _send_soon(ids: list[int]) -> None:
    try:
        # One try at the broker: the request that changed the alert must not wait on it.
        tasks.webhooks_send.apply_async(args=[ids], retry=False)
    except dispatch.SEND_ERRORS:  # the broker is away: the periodic pass sends them
        log.warning("could not enqueue webhooks_send for %s", ids, exc_info=True)


# --- bodies --------------------------------------------------------------------------------
def _alert_link(alert: Alert | None, webhook: Webhook) -> str:
    vault_id = alert.vault_id if alert is not None else webhook.vault_id
    return settings.HAVEN_PUBLIC_URL + reverse("jobs:vault_alerts", args=[vault_id])


def _who(user) -> str | None:
    return user.get_username() if user is not None else None


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _body(webhook: Webhook, alert: Alert | None, event: str, *, user=None) -> dict:
    link = _alert_link(alert, webhook)
    if alert is None:
        title = f"Test from Haven for vault {webhook.vault.name}"
        text = f"{_who(user) or 'Someone'} sent a test of webhook {webhook.name}."
        severity = None
    else:
        verb = WebhookDelivery.Event(event).label
        title = f"{verb}: {alert.get_kind_display()} on {alert.machine or alert.vault}"
        text = alert.message
        if event == WebhookDelivery.Event.ACKNOWLEDGED and alert.acknowledged_by_id:
            text += f" Acknowledged by {_who(alert.acknowledged_by)}."
        elif event == WebhookDelivery.Event.CLOSED:
            closer = _who(alert.closed_by) if alert.closed_by_id else "the portal"
            text += f" Closed by {closer}."
        severity = alert.severity
    if webhook.format == Webhook.Format.SLACK:
        return {"text": f"*{title}*\n{text}\n<{link}|Backup Alerts>"}
    if webhook.format == Webhook.Format.TEAMS:
        return {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": title,
            "themeColor": {"critical": "D13438", "warning": "FFB900"}.get(severity or "", "0078D4"),
            "title": title,
            "text": text,
            "potentialAction": [
                {
                    "@type": "OpenUri",
                    "name": "Backup Alerts",
                    "targets": [{"os": "default", "uri": link}],
                }
            ],
        }
    body: dict = {"event": event, "title": title, "text": text, "url": link}
    body["vault"] = {"id": str(webhook.vault_id), "name": webhook.vault.name}
    if alert is not None:
        body["alert"] = {
            "id": alert.pk,
            "kind": alert.kind,
            "kind_label": alert.get_kind_display(),
            "severity": alert.severity,
            "state": alert.state,
            "message": alert.message,
            "machine": (
                {"id": str(alert.machine_id), "name": alert.machine.name}
                if alert.machine_id
                else None
            ),
            "raised_at": _when(alert.raised_at),
            "last_raised_at": _when(alert.last_raised_at),
            "occurrences": alert.occurrences,
            "acknowledged_at": _when(alert.acknowledged_at),
            "acknowledged_by": _who(alert.acknowledged_by) if alert.acknowledged_by_id else None,
            "closed_at": _when(alert.resolved_at),
            "closed_by": _who(alert.closed_by) if alert.closed_by_id else None,
        }
    return body


def signature(secret: str, body: bytes) -> str:
    """The value of ``X-Haven-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- sending ---------------------------------------------------------------------------------
def backoff(attempts: int) -> timedelta:
    """The pause after ``attempts`` failed tries: 30 s, 1 min, 2, 4, 8 minutes."""
    return BACKOFF_FIRST * 2 ** max(attempts - 1, 0)


def _pending():
    return WebhookDelivery.objects.filter(delivered_at__isnull=True, abandoned_at__isnull=True)


def webhooks_send(*, ids: list[int], now: datetime | None = None) -> int:
    """The first try of new deliveries (the worker, right after the commit)."""
    now = now or timezone.now()
    sent = 0
    rows = _pending().filter(pk__in=ids, next_attempt_at__lte=now).select_related("webhook")
    for row in rows:
        sent += _attempt(row, now=now)
    return sent


def webhooks_send_due(*, now: datetime | None = None) -> dict:
    """The periodic pass: retry the deliveries whose backoff has passed, oldest first, and
    forget the finished ones older than ``KEEP``."""
    now = now or timezone.now()
    counts = {"sent": 0, "failed": 0, "purged": 0}
    rows = list(
        _pending().filter(next_attempt_at__lte=now).select_related("webhook").order_by("id")[:BATCH]
    )
    for row in rows:
        if _attempt(row, now=now):
            counts["sent"] += 1
        else:
            counts["failed"] += 1
    old = now - KEEP
    counts["purged"], _ = WebhookDelivery.objects.filter(
        Q(delivered_at__lt=old) | Q(abandoned_at__lt=old)
    ).delete()
    return counts


def _claim(row: WebhookDelivery, now: datetime, timeout: float) -> bool:
    """Move the row's next try past this one, so no other sender takes it meanwhile."""
    hold = now + timedelta(seconds=timeout * 2)
    return bool(
        _pending()
        .filter(pk=row.pk, next_attempt_at=row.next_attempt_at)
        .update(next_attempt_at=hold)
    )


def _attempt(row: WebhookDelivery, *, now: datetime, timeout: float = TIMEOUT_SECONDS) -> int:
    """One POST; 1 when the receiver took it (2xx), else 0 with the try recorded and the next
    one scheduled (or the delivery given up: after ``MAX_ATTEMPTS``, or at once when the
    destination is refused, since that answer will not change by itself)."""
    if not _claim(row, now, timeout):
        return 0
    hook = row.webhook
    data = json.dumps(row.body, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Haven-Webhook/1",
        EVENT_HEADER: row.event,
        DELIVERY_HEADER: str(row.pk),
    }
    if hook.secret:
        headers[SIGNATURE_HEADER] = signature(hook.secret, data)
    status: int | None = None
    error = ""
    refused = False
    try:
        # No redirects: a receiver must not send the portal somewhere else. The answer's
        # body is never read (streamed, then closed): only its status matters.
        with egress.post(hook.url, data=data, headers=headers, timeout=timeout) as response:
            status = response.status_code
            reason = response.reason or ""
        if not 200 <= status < 300:
            error = f"HTTP {status} {reason}".strip()
    except egress.DestinationRefused as exc:
        # The same answer on every try until an admin allows the network: no retries.
        error, refused = str(exc), True
    except egress.HostUnresolved as exc:
        error = str(exc)
    except requests.RequestException as exc:
        error = _failure(exc, hook, timeout)
    attempts = row.attempts + 1
    tried = {"at": now.isoformat(), "attempt": attempts, "status": status, "error": error}
    fields: dict = {
        "attempts": attempts,
        "tries": [*row.tries, tried][-MAX_ATTEMPTS * 2 :],
        "status_code": status,
        "last_error": error,
    }
    if not error:
        fields["delivered_at"] = now
    elif refused or attempts >= MAX_ATTEMPTS:
        fields["abandoned_at"] = now
    else:
        fields["next_attempt_at"] = now + backoff(attempts)
    WebhookDelivery.objects.filter(pk=row.pk).update(**fields)
    return 0 if error else 1


def _failure(exc: requests.RequestException, hook: Webhook, timeout: float) -> str:
    """Why a try failed, in words that never repeat the URL's path or query (the secret
    part of a chat tool's URL; everyone who sees the vault sees the deliveries)."""
    host = hook.host
    if isinstance(exc, requests.Timeout):
        return f"No answer from {host} within {timeout:g} s."
    if isinstance(exc, requests.exceptions.SSLError):
        return f"The TLS handshake with {host} failed (certificate or protocol)."
    if isinstance(exc, requests.ConnectionError):
        return f"Could not connect to {host}."
    return f"The request to {host} failed ({type(exc).__name__})."


def webhook_deliveries(webhook_ids, *, limit: int = 50):
    """The latest deliveries of these webhooks, newest first (one query)."""
    return (
        WebhookDelivery.objects.filter(webhook_id__in=list(webhook_ids))
        .select_related("webhook", "alert")
        .order_by("-id")[:limit]
    )
