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
