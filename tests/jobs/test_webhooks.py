"""Alert webhooks (jobs.services.webhooks): configuration and its checks per role, the outbox
row written with the alert change, delivery to a real HTTP receiver in this process with a
retry after a 500 and the HMAC signature, the formats, and giving up after MAX_ATTEMPTS.

The receiver listens on 127.0.0.1, which the portal refuses by default (jobs.services.egress;
tests/jobs/test_webhook_egress.py): the tests that use it allow 127.0.0.0/8 explicitly."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import services, tasks
from jobs.models import Alert, Webhook, WebhookDelivery
from jobs.services import fleet, webhooks
from portal.models import Role
from tests.support import builders
from tests.support.activity import one_entry
from tests.support.webhook_receiver import Receiver, running_receiver
from vaults.services import vault_delete

pytestmark = pytest.mark.django_db


@pytest.fixture
def loopback_allowed(settings):
    settings.HAVEN_WEBHOOK_ALLOWED_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture
def receiver(loopback_allowed) -> Iterator[Receiver]:
    with running_receiver() as found:
        yield found


@pytest.fixture
def machine(vault):
    return builders.make_machine(vault=vault, name="web-01", last_seen_at=timezone.now())


def _raise(machine) -> Alert:
    return services.alert_raise(
        vault=machine.vault,
        machine=machine,
        kind=Alert.Kind.BACKUP_FAILED,
        severity=Alert.Severity.CRITICAL,
        message="Backup of web-01 failed: disk full",
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("file:///etc/passwd", "Only http:// and https:// URLs are allowed."),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "Only http:// and https:// URLs are allowed."),
        ("javascript:alert(1)", "Only http:// and https:// URLs are allowed."),
        ("https://", "The URL has no host name."),
        ("https://user:pw@hooks.example.test/x", "Put no user name or password"),
        ("http://host:notaport/", "This is not a URL."),
        ("", "Enter the URL"),
    ],
)
def test_a_webhook_url_must_be_http_or_https(url, problem):
    with pytest.raises(webhooks.WebhookInvalid) as caught:
        webhooks.webhook_validate(name="ops", url=url, format="generic", secret="")
    assert caught.value.message_dict["url"][0].startswith(problem)


@pytest.mark.parametrize(
    ("role", "status"),
    [(Role.READER, 403), (Role.BACKUP_OPERATOR, 403), (Role.CONTRIBUTOR, 302), (Role.OWNER, 302)],
)
def test_contributors_and_up_add_webhooks(client, member, vault, role, status):
    client.force_login(member(role))
    url = f"/backup-center/vaults/{vault.pk}/webhooks/"
    assert client.get(url).status_code == 200
    response = client.post(
        url, {"name": "ops", "url": "https://hooks.example.test/x", "format": "slack"}
    )
    assert response.status_code == status
    assert Webhook.objects.filter(vault=vault).exists() == (status == 302)
    one_entry(operation="webhook.add", outcome="succeeded" if status == 302 else "refused")


def test_bad_input_is_a_400_with_field_messages(client, alice, vault, charlie):
    client.force_login(alice)
    url = f"/backup-center/vaults/{vault.pk}/webhooks/"
    response = client.post(url, {"name": "", "url": "ftp://x.test/", "format": "fax"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "Give the webhook a name." in page and "Only http:// and https://" in page
    assert "Choose one of the formats offered." in page
    assert not Webhook.objects.exists()
    client.force_login(charlie)
    assert client.get(url).status_code == 404


def test_an_alert_is_posted_after_a_500_retry_and_signed(vault, machine, receiver, alice):
    hook = webhooks.webhook_add(
        vault=vault, user=alice, name="ops", url=receiver.url, format="generic", secret="s3cret"
    )
    receiver.statuses = [500]

    alert = _raise(machine)  # written with the alert; nothing sent yet
    now = timezone.now()
    (row,) = WebhookDelivery.objects.filter(webhook=hook)
    assert (row.event, row.attempts, receiver.got) == ("alert.raised", 0, [])

    assert webhooks.webhooks_send(ids=[row.pk], now=now) == 0
    row.refresh_from_db()
    assert (row.attempts, row.status_code, row.last_error) == (
        1,
        500,
        "HTTP 500 Internal Server Error",
    )
    assert row.next_attempt_at == now + timedelta(seconds=30)
    assert row.delivered_at is None and row.outcome == "Retrying"
    # Not due yet: the periodic pass leaves it.
    assert webhooks.webhooks_send_due(now=now + timedelta(seconds=10))["sent"] == 0

    assert webhooks.webhooks_send_due(now=now + timedelta(seconds=31))["sent"] == 1
    row.refresh_from_db()
    assert (row.attempts, row.status_code, row.outcome) == (2, 200, "Delivered")
    assert [t["status"] for t in row.tries] == [500, 200]

    assert len(receiver.got) == 2
    got = receiver.got[-1]
    expected = "sha256=" + hmac.new(b"s3cret", got["body"], hashlib.sha256).hexdigest()
    assert got["headers"]["X-Haven-Signature"] == expected
    assert got["headers"]["X-Haven-Event"] == "alert.raised"
    body = json.loads(got["body"])
    assert body["alert"]["id"] == alert.pk and body["alert"]["state"] == "active"
    assert body["alert"]["machine"]["name"] == "web-01"
    assert body["url"].endswith(f"/jobs/vaults/{vault.pk}/alerts/")


def test_acknowledge_and_close_are_events_too(vault, machine, alice):
    webhooks.webhook_add(
        vault=vault, user=alice, name="chat", url="https://x.test/", format="slack"
    )
    alert = _raise(machine)
    fleet.alert_acknowledge(alert=alert, user=alice)
    services.alerts_resolve(machine=machine, kinds=[Alert.Kind.BACKUP_FAILED])
    rows = list(WebhookDelivery.objects.order_by("id"))
    assert [r.event for r in rows] == ["alert.raised", "alert.acknowledged", "alert.closed"]
    assert set(rows[1].body) == {"text"} and "Acknowledged by alice" in rows[1].body["text"]
    assert "Closed by the portal" in rows[2].body["text"]
    # Raised again while open: no new event (as no new email).
    _raise(machine)
    fresh = _raise(machine)
    assert WebhookDelivery.objects.filter(alert=fresh).count() == 1


def test_teams_gets_a_message_card(vault, machine, alice):
    webhooks.webhook_add(
        vault=vault, user=alice, name="teams", url="https://x.test/", format="teams"
    )
    _raise(machine)
    body = WebhookDelivery.objects.get().body
    assert body["@type"] == "MessageCard" and body["themeColor"] == "D13438"
    assert body["title"] == "Alert raised: Backup failure on web-01"


def test_a_delivery_is_given_up_after_max_attempts(vault, machine, receiver, alice):
    hook = webhooks.webhook_add(
        vault=vault, user=alice, name="ops", url=receiver.url, format="generic"
    )
    receiver.statuses = [503] * webhooks.MAX_ATTEMPTS
    _raise(machine)
    now = timezone.now()
    for _ in range(webhooks.MAX_ATTEMPTS + 1):
        webhooks.webhooks_send_due(now=now)
        now += timedelta(hours=1)
    row = WebhookDelivery.objects.get(webhook=hook)
    assert (row.attempts, row.outcome) == (webhooks.MAX_ATTEMPTS, "Failed")
    assert len(receiver.got) == webhooks.MAX_ATTEMPTS


def test_an_unreachable_receiver_is_an_error_not_a_500(client, alice, vault, loopback_allowed):
    hook = webhooks.webhook_add(
        vault=vault, user=alice, name="gone", url="http://127.0.0.1:9/t/SECRET", format="generic"
    )
    client.force_login(alice)
    response = client.post(f"/backup-center/webhooks/{hook.pk}/test/", follow=True)
    assert response.status_code == 200
    row = WebhookDelivery.objects.get()
    assert row.attempts == 1 and row.delivered_at is None
    assert row.last_error == "Could not connect to 127.0.0.1:9."
    assert "failed: Could not connect to 127.0.0.1:9." in response.content.decode()


def test_those_who_cannot_configure_never_see_a_webhooks_path(client, member, alice, vault):
    """A chat tool's webhook URL is its credential: a Reader sees the host only, on the page
    and in the activity log."""
    url = "https://hooks.slack.example/services/T000/B000/SECRETTOKEN"
    webhooks.webhook_add(vault=vault, user=alice, name="chat", url=url, format="slack")
    client.force_login(member(Role.READER))
    page = client.get(f"/backup-center/vaults/{vault.pk}/webhooks/").content.decode()
    assert "https://hooks.slack.example/…" in page and "SECRETTOKEN" not in page
    log = client.get(f"/vaults/{vault.pk}/activity/").content.decode()
    assert "Add alert webhook" in log and "SECRETTOKEN" not in log
    client.force_login(alice)
    page = client.get(f"/backup-center/vaults/{vault.pk}/webhooks/").content.decode()
    assert "SECRETTOKEN" in page


@pytest.mark.parametrize(
    ("role", "status"),
    [(Role.READER, 403), (Role.BACKUP_OPERATOR, 403), (Role.CONTRIBUTOR, 302)],
)
def test_send_test_and_delete_need_contributor(
    client, member, vault, alice, receiver, role, status
):
    hook = webhooks.webhook_add(
        vault=vault, user=alice, name="ops", url=receiver.url, format="generic"
    )
    client.force_login(member(role))
    assert client.post(f"/backup-center/webhooks/{hook.pk}/test/").status_code == status
    assert len(receiver.got) == (1 if status == 302 else 0)
    if status == 302:
        assert json.loads(receiver.got[0]["body"])["event"] == "test"
    assert client.post(f"/backup-center/webhooks/{hook.pk}/delete/").status_code == status
    assert Webhook.objects.filter(pk=hook.pk).exists() == (status != 302)


def test_the_commit_hands_the_deliveries_to_the_worker(
    vault, machine, receiver, alice, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(
        tasks.webhooks_send, "apply_async", lambda args, retry: tasks.webhooks_send(*args)
    )
    webhooks.webhook_add(vault=vault, user=alice, name="ops", url=receiver.url, format="generic")
    with django_capture_on_commit_callbacks(execute=True):
        _raise(machine)
        assert receiver.got == []  # nothing leaves before the commit
    assert len(receiver.got) == 1
    assert WebhookDelivery.objects.get().outcome == "Delivered"


def test_deleting_an_emptied_vault_takes_its_webhooks_and_deliveries(alice, resource_group):
    gone = builders.make_vault(resource_group=resource_group, name="vault-gone")
    machine = builders.make_machine(vault=gone, name="old-01", unregistered_at=timezone.now())
    webhooks.webhook_add(
        vault=gone, user=alice, name="ops", url="https://x.test/", format="generic"
    )
    _raise(machine)
    assert WebhookDelivery.objects.count() == 1
    vault_delete(vault=gone, user=alice)
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()
