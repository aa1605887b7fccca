"""Retention after each backup and daily: expired points go, the latest stays, and packs no
kept point references are deleted with the account key after a grace period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agents.runtime.blobstore.memory import MemoryStore
from jobs import services
from jobs.models import RecoveryPoint

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)


def point(machine, at, *, packs, snapshot, kind="adhoc"):
    return RecoveryPoint.objects.create(
        machine=machine,
        vault=machine.vault,
        snapshot_id=snapshot,
        manifest_blob=f"snapshots/{snapshot}",
        created_at=at,
        tagged_for=at,
        kind=kind,
        pack_ids=packs,
        stored_bytes=100,
    )


def pack(name: str) -> str:
    return f"data/{name[:2]}/{name}"


@pytest.fixture
def store():
    store = MemoryStore()
    for name in ("aa01", "aa02", "bb03", "cc04"):
        store.put(pack(name), b"x")
    for snap in ("s1", "s2", "s3"):
        store.put(f"snapshots/{snap}", b"m")
    # Every blob is old enough for collection unless a test makes it fresh.
    old = datetime(2020, 1, 1, tzinfo=UTC)
    store._blobs = {name: (blob, old) for name, (blob, _) in store._blobs.items()}
    return store


def test_expired_points_are_removed_and_their_unreferenced_packs_collected(
    machine, policy, store, settings
):
    settings.HAVEN_GC_GRACE_HOURS = 24
    now = datetime(2024, 6, 20, 12, tzinfo=UTC)
    point(machine, now - 30 * DAY, packs=["aa01", "aa02"], snapshot="s1")  # daily 7: expired
    point(machine, now - 2 * DAY, packs=["aa02", "bb03"], snapshot="s2")
    point(machine, now - 1 * DAY, packs=["bb03"], snapshot="s3")
    removed = services.retention_apply(machine=machine, now=now, store=store)
    assert [p.snapshot_id for p in removed] == ["s1"]
    assert not store.exists("snapshots/s1") and store.exists("snapshots/s2")
    assert not store.exists(pack("aa01"))  # only s1 used it
    assert store.exists(pack("aa02")) and store.exists(pack("bb03"))  # still referenced
    assert not store.exists(pack("cc04"))  # nobody references it (an interrupted backup)
    assert RecoveryPoint.objects.filter(removed_at__isnull=True).count() == 2


def test_the_latest_point_is_never_removed(machine, policy, store):
    now = datetime(2024, 6, 20, 12, tzinfo=UTC)
    point(machine, now - 400 * DAY, packs=["aa01"], snapshot="s1")
    assert services.retention_apply(machine=machine, now=now, store=store) == []
    assert store.exists(pack("aa01"))


def test_fresh_unreferenced_packs_survive_the_grace_period(machine, policy, store, settings):
    settings.HAVEN_GC_GRACE_HOURS = 24
    now = datetime.now(UTC)
    store.put(pack("dd05"), b"being written by a running backup")
    deleted = services.packs_collect(machine=machine, now=now, store=store)
    assert pack("dd05") not in deleted and store.exists(pack("dd05"))
    assert pack("cc04") in deleted


def test_storage_used_sums_the_kept_points(machine, policy):
    from jobs import selectors

    now = datetime(2024, 6, 20, 12, tzinfo=UTC)
    point(machine, now, packs=[], snapshot="s1")
    point(machine, now + DAY, packs=[], snapshot="s2")
    assert selectors.storage_used(machine=machine) == 200
    assert selectors.storage_used(vault=machine.vault) == 200


def test_a_gone_machines_last_point_is_kept_whatever_its_age_and_the_page_says_so(
    machine, policy, store, client, member
):
    from django.urls import reverse
    from django.utils import timezone

    from agents.models import Machine
    from jobs.services.pruning import keeps_last_point
    from portal.models import Role

    now = datetime(2024, 6, 20, 12, tzinfo=UTC)
    point(machine, now - 30 * DAY, packs=["aa01"], snapshot="s1")
    point(machine, now - 20 * DAY, packs=["bb03"], snapshot="s2")
    # Registered: the latest point keeps its expiry (it goes once a newer point exists).
    assert not keeps_last_point(machine)
    services.retention_apply(machine=machine, now=now, store=store)
    assert RecoveryPoint.objects.get(snapshot_id="s2").expires_at is not None

    Machine.objects.filter(pk=machine.pk).update(unregistered_at=now - 25 * DAY)
    machine.refresh_from_db()
    assert keeps_last_point(machine)
    removed = services.retention_apply(machine=machine, now=now, store=store)
    assert [p.snapshot_id for p in removed] == []  # s1 went in the first run
    last = RecoveryPoint.objects.get(snapshot_id="s2")
    assert last.removed_at is None and last.expires_at is None
    # Ten years on, still there, and its packs too.
    later = now + 3650 * DAY
    assert services.retention_apply(machine=machine, now=later, store=store) == []
    assert store.exists("snapshots/s2") and store.exists(pack("bb03"))

    # The recovery points page opens for the gone machine (a Reader sees it) and says why.
    Machine.objects.filter(pk=machine.pk).update(unregistered_at=timezone.now())
    client.force_login(member(Role.READER))
    page = client.get(reverse("jobs:recovery_points", args=[machine.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "Kept whatever its age" in text and "is unregistered" in text
