"""The Backup center hears its subscriptions live: a page watches ``fleet:<subscription>``,
which only a member of the subscription may join; a job's state, an alert or a machine
coming online there tells it (``portal.realtime.FLEET_CHANGED``) and it fetches its results
again (static/js/fleet.js; in Chromium: tests/e2e/test_backup_center.py)."""

from __future__ import annotations

import os

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from agents import services as agent_services
from agents.models import Machine
from jobs import services
from jobs.models import Alert, Job
from portal import realtime
from tests.portal.test_live_socket import _session_for, _socket, run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _sockets_here(monkeypatch):
    monkeypatch.setattr(realtime, "serving_pid", os.getpid())  # this process has the sockets


def test_members_hear_their_subscriptions_changes_and_outsiders_cannot_watch(alice, charlie, vault):
    machine = Machine.objects.create(vault=vault, name="web-01")  # never seen: offline
    watch = f"/ws/live/?watch=fleet:{vault.subscription_id}"
    owner, outsider = _session_for(alice), _session_for(charlie)

    def raise_alert():
        services.alert_raise(
            vault=vault,
            machine=machine,
            kind=Alert.Kind.BACKUP_FAILED,
            severity=Alert.Severity.CRITICAL,
            message="Backup of web-01 failed",
        )

    def finish_a_job():
        job = Job.objects.create(vault=vault, machine=machine, operation=Job.Operation.BACKUP)
        services.job_publish(job)

    async def scenario():
        mine, theirs = _socket(owner, watch), _socket(outsider, watch)
        assert (await mine.connect())[0] and (await theirs.connect())[0]
        for change in (
            raise_alert,
            finish_a_job,
            lambda: agent_services.machine_heartbeat(machine=machine),  # comes online
        ):
            await database_sync_to_async(change)()
            assert realtime.flush(timeout=10)
            heard = []
            while not await mine.receive_nothing(timeout=0.3):
                heard.append(await mine.receive_from())
            assert realtime.FLEET_CHANGED in heard, change
            assert await theirs.receive_nothing(timeout=0.3)
        await mine.disconnect()
        await theirs.disconnect()

    run(scenario)


def test_the_page_watches_each_subscription_it_shows(alice, charlie, vault):
    client = Client()
    client.force_login(alice)
    page = client.get("/backup-center/").content.decode()
    assert f"/ws/live/?watch=fleet:{vault.subscription_id}" in page
    assert 'id="fleet-changed"' in page and "js/fleet.js" in page
    client.force_login(charlie)  # his own subscription only
    page = client.get("/backup-center/").content.decode()
    assert f"fleet:{vault.subscription_id}" not in page
