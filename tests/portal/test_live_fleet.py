"""The Backup center hears its subscriptions live: a page watches ``fleet:<subscription>``,
which only a member of the subscription may join; a job's state, an alert, a machine
coming online or (found by the worker's sweep) going Offline there tells it (``portal.realtime.FLEET_CHANGED``) and it fetches its results
again (static/js/fleet.js; in Chromium: tests/e2e/test_backup_center.py)."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from agents import services as agent_services
from agents import tasks as agent_tasks
from agents.models import OFFLINE_AFTER, Machine
from jobs import services
from jobs.models import Alert, Job
from portal import realtime
from portal.celery import app as celery_app
from tests.portal.test_live_socket import CONNECT_SECONDS, _session_for, _socket, run
from tests.support import builders

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
        assert (await mine.connect(timeout=CONNECT_SECONDS))[0] and (
            await theirs.connect(timeout=CONNECT_SECONDS)
        )[0]
        for change in (
            raise_alert,
            finish_a_job,
            lambda: agent_services.machine_heartbeat(machine=machine),  # comes online
        ):
            await database_sync_to_async(change)()
            assert realtime.flush(timeout=10)
            heard = []
            while not await mine.receive_nothing(timeout=0.3):
                heard.append(await mine.receive_from(timeout=5))
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


def test_machines_going_offline_tell_their_subscriptions_once_in_one_query(
    alice, charlie, vault, django_assert_num_queries
):
    """Nothing is written when a machine goes Offline (its heartbeats stop): the sweep finds
    the heartbeats that aged past OFFLINE_AFTER since it last looked, with one query for the
    whole fleet, and tells each such subscription once."""
    fabrikam = builders.make_subscription(owner=charlie, name="Fabrikam")
    group = builders.make_resource_group(subscription=fabrikam)
    other = builders.make_vault(resource_group=group, container="v-charlie")
    cache.delete(agent_services.OFFLINE_SWEPT_KEY)  # a first sweep: it looks back one period
    t0 = timezone.now()
    t1 = t0 + timedelta(seconds=agent_services.OFFLINE_SWEEP_SECONDS)
    crossing = t0 - OFFLINE_AFTER + timedelta(seconds=10)  # online at t0, offline at t1
    for n in range(3):  # several in one subscription: one message
        Machine.objects.create(vault=vault, name=f"web-{n}", last_seen_at=crossing)
    Machine.objects.create(vault=vault, name="long-gone", last_seen_at=t0 - 2 * OFFLINE_AFTER)
    Machine.objects.create(vault=other, name="up", last_seen_at=t1 - timedelta(seconds=5))
    Machine.objects.create(
        vault=other, name="unregistered", last_seen_at=crossing, unregistered_at=t0
    )
    watch = f"/ws/live/?watch=fleet:{vault.subscription_id}"
    owner = _session_for(alice)

    async def scenario():
        mine = _socket(owner, watch)
        assert (await mine.connect(timeout=CONNECT_SECONDS))[0]

        def sweep(at):
            with django_assert_num_queries(1):
                return agent_services.machines_offline_announce(now=at)

        assert await database_sync_to_async(sweep)(t0) == []  # all still online at t0
        assert await database_sync_to_async(sweep)(t1) == [vault.subscription_id]
        assert realtime.flush(timeout=10)
        assert await mine.receive_from(timeout=5) == realtime.FLEET_CHANGED
        assert await mine.receive_nothing(timeout=0.3)  # once for the three
        # The next sweep: they were told already.
        later = t1 + timedelta(seconds=agent_services.OFFLINE_SWEEP_SECONDS)
        assert await database_sync_to_async(sweep)(later) == []
        assert realtime.flush(timeout=10)
        assert await mine.receive_nothing(timeout=0.3)
        # Fabrikam's "up" machine goes quiet: that subscription is told, not alice's.
        late = t1 - timedelta(seconds=5) + OFFLINE_AFTER
        assert await database_sync_to_async(sweep)(late) == [other.subscription_id]
        assert realtime.flush(timeout=10)
        assert await mine.receive_nothing(timeout=0.3)
        await mine.disconnect()

    run(scenario)


def test_the_offline_sweep_runs_every_30_seconds_on_the_portal_queue():
    entry = celery_app.conf.beat_schedule["agents.offline_announce"]
    assert entry["task"] == agent_tasks.offline_announce.name == "agents.offline_announce"
    assert entry["schedule"] == agent_services.OFFLINE_SWEEP_SECONDS == 30
    assert entry["options"]["queue"] == "portal"
