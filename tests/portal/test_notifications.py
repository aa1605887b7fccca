"""The bell: shown from the database on page load, mark all read, one user's only."""

from __future__ import annotations

from django.urls import reverse

from portal import services
from tests.portal.conftest import client_for


def test_the_bell_shows_unread_notifications_from_the_database(alice, charlie):
    services.notification_publish(user=alice, title="Backup failed", level="error")
    services.notification_publish(user=charlie, title="Charlie's secret")
    page = client_for(alice).get(reverse("portal:home")).content.decode()
    assert 'id="bell-count" data-count="1"' in page
    assert "Backup failed" in page
    assert "Charlie&#x27;s secret" not in page


def test_a_keyed_notification_is_updated_not_duplicated(alice):
    services.notification_publish(
        user=alice, key="deploy:1", title="Deployment in progress", level="in_progress"
    )
    services.notification_publish(
        user=alice, key="deploy:1", title="Deployment succeeded", level="success"
    )
    assert list(alice.notifications.values_list("title", flat=True)) == ["Deployment succeeded"]


def test_mark_all_read_marks_only_mine(alice, charlie):
    services.notification_publish(user=alice, title="One")
    services.notification_publish(user=alice, title="Two")
    services.notification_publish(user=charlie, title="Other")
    response = client_for(alice).post(reverse("portal:notifications-read"))
    assert response.status_code == 302
    assert not alice.notifications.filter(read_at__isnull=True).exists()
    assert charlie.notifications.filter(read_at__isnull=True).count() == 1


def test_mark_all_read_over_htmx_returns_the_new_bell(alice):
    services.notification_publish(user=alice, title="One")
    response = client_for(alice).post(reverse("portal:notifications-read"), HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert 'id="bell-count" data-count="0" hx-swap-oob="outerHTML"' in body
    assert 'id="notification-list" hx-swap-oob="outerHTML"' in body


def test_mark_all_read_needs_a_post_and_a_session(alice, client):
    assert client_for(alice).get(reverse("portal:notifications-read")).status_code == 405
    assert client.post(reverse("portal:notifications-read")).status_code == 302


def test_the_bell_partial_and_the_full_list(alice):
    services.notification_publish(
        user=alice, title="Restore finished", link_url="/jobs/1/", link_label="Open job"
    )
    client = client_for(alice)
    partial = client.get(reverse("portal:bell"), HTTP_HX_REQUEST="true").content.decode()
    assert partial.startswith('<details class="bell" id="bell"')
    assert "Restore finished" in partial
    full = client.get(reverse("portal:notifications")).content.decode()
    assert "Open job" in full
    assert client.get(reverse("portal:bell")).status_code == 302
