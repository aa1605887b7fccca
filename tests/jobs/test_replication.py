"""Geo-redundant storage: the worker's replication passes copy a machine container to the
secondary store (a second local directory here, a second Azurite in the servers pass), as
Replicate jobs, resuming without copying a blob twice; the lag and its alert; deletions on
both sides; and which points Cross Region Restore may read."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.runtime.blobstore import StorageUnavailable
from agents.runtime.engine import layout
from jobs import services
from jobs.models import Alert, Job, RecoveryPoint, ReplicaState
from jobs.services import replication
from tests.jobs.conftest import make_machine
from tests.support.servers import azurite_connection_string, free_port
from vaults import storage
from vaults.models import Vault

pytestmark = pytest.mark.django_db
PACKS = [f"{i:02x}" + "ab" * 15 for i in range(6)]
SNAPSHOT = "5" * 32


@pytest.fixture
def grs(settings, tmp_path, vault):
    """``vault`` geo-redundant, its secondary in a second directory (or Azurite)."""
    settings.SECONDARY_STORAGE_DIR = tmp_path / "secondary"
    Vault.objects.filter(pk=vault.pk).update(
        redundancy=Vault.Redundancy.GEO, secondary_container=vault.container or "vault-one"
    )
    vault.refresh_from_db()
    return vault


@pytest.fixture
def web01(grs):
    machine = make_machine(grs)
    with storage.primary_account().store(machine.container) as store:
        store.put(layout.CONFIG_BLOB, b"config")
        store.put(layout.key_blob("k1"), b"wrapped key")
        for i, pack_id in enumerate(PACKS):
            store.put(layout.pack_blob(pack_id), bytes([i]) * (1000 + i))
        store.put(layout.index_blob("i1"), b"index")
        store.put(layout.manifest_blob(SNAPSHOT), b"sealed manifest")
    return machine


def secondary_blobs(machine) -> dict[str, bytes]:
    with storage.secondary_account().store(machine.container) as store:
        return {info.name: store.get(info.name) for info in store.list()}


def primary_blobs(machine) -> dict[str, bytes]:
    with storage.primary_account().store(machine.container) as store:
        return {info.name: store.get(info.name) for info in store.list()}


def test_a_pass_copies_every_blob_as_a_replicate_job_and_the_next_copies_nothing(web01):
    job = services.replicate_machine(machine=web01)
    assert job.operation == Job.Operation.REPLICATE and job.status == Job.Status.COMPLETED
    assert job.machine == web01 and job.details["blobs"] == len(PACKS) + 4
    assert secondary_blobs(web01) == primary_blobs(web01)
    state = ReplicaState.objects.get(machine=web01)
    assert state.pending_blobs == 0 and state.oldest_pending_at is None
    assert state.copied_blobs == len(PACKS) + 4
    assert services.replication_lag(state) is None

    assert services.replicate_machine(machine=web01) is None  # nothing new: no job
    with storage.primary_account().store(web01.container) as store:
        store.put(layout.pack_blob("f" * 32), b"a new pack")
    again = services.replicate_machine(machine=web01)
    assert again.details["blobs"] == 1 and again.bytes_transferred == len(b"a new pack")
    state.refresh_from_db()
    assert state.copied_blobs == len(PACKS) + 5  # never a blob twice


def test_an_interrupted_pass_resumes_and_never_copies_a_manifest_before_its_packs(
    web01, monkeypatch
):
    real = replication._copy_one
    calls = []

    def failing(blob, source, target):
        calls.append(blob.name)
        if len(calls) == 3:
            raise StorageUnavailable("the secondary went away")
        return real(blob, source, target)

    monkeypatch.setattr(replication, "_copy_one", failing)
    job = services.replicate_machine(machine=web01)
    assert job.status == Job.Status.FAILED and "went away" in job.error
    assert calls[:2] == sorted(calls[:2]) and all(c.startswith("data/") for c in calls)
    copied = secondary_blobs(web01)
    assert len(copied) == 2 and layout.manifest_blob(SNAPSHOT) not in copied
    state = ReplicaState.objects.get(machine=web01)
    assert state.pending_blobs == len(PACKS) + 4 - 2 and state.oldest_pending_at is not None
    assert "went away" in state.error

    monkeypatch.setattr(replication, "_copy_one", real)
    resumed = services.replicate_machine(machine=web01)
    assert resumed.status == Job.Status.COMPLETED
    assert resumed.details["blobs"] == len(PACKS) + 4 - 2  # what was left, nothing more
    assert secondary_blobs(web01) == primary_blobs(web01)


def test_a_blob_that_differs_on_the_secondary_is_never_overwritten(web01):
    name = layout.pack_blob(PACKS[0])
    storage.secondary_account().create_container(web01.container)
    with storage.secondary_account().store(web01.container) as store:
        store.put(name, b"X" * 10)  # another blob under the same name
    assert services.replicate_machine(machine=web01) is None
    state = ReplicaState.objects.get(machine=web01)
    assert "differ" in state.error and "never overwritten" in state.error
    assert secondary_blobs(web01) == {name: b"X" * 10}  # and nothing else copied


def test_each_copy_is_read_back_and_its_hash_checked(web01, monkeypatch):
    real = replication._digest
    seen = []

    def counting(data):
        seen.append(real(data))
        return seen[-1]

    monkeypatch.setattr(replication, "_digest", counting)
    services.replicate_machine(machine=web01)
    assert len(seen) == 2 * (len(PACKS) + 4)  # the original and the copy read back
    assert seen[0::2] == seen[1::2]

    with storage.primary_account().store(web01.container) as store:
        store.put(layout.index_blob("i2"), b"more index")
    calls = []

    def damaged_copy(data):  # the second digest of each blob is the copy's
        calls.append(data)
        return real(data + b"!" if len(calls) % 2 == 0 else data)

    monkeypatch.setattr(replication, "_digest", damaged_copy)
    job = services.replicate_machine(machine=web01)
    assert job.status == Job.Status.FAILED and "does not match" in job.error


def test_two_passes_never_overlap(web01):
    state = ReplicaState.objects.create(
        machine=web01, vault=web01.vault, lease_until=timezone.now() + timedelta(minutes=1)
    )
    assert services.replicate_machine(machine=web01) is None
    account = storage.secondary_account()
    assert not account.container_exists(web01.container) or secondary_blobs(web01) == {}
    state.refresh_from_db()
    assert state.copied_blobs == 0


def test_the_lag_raises_a_warning_alert_while_the_secondary_is_away_and_clears_after(
    web01, settings, tmp_path
):
    settings.HAVEN_REPLICATION_LAG_ALERT_MINUTES = 30
    good = settings.SECONDARY_STORAGE_DIR, settings.SECONDARY_STORAGE_CONNECTION_STRING
    if settings.AZURE_STORAGE_CONNECTION_STRING:  # nothing listens there
        settings.SECONDARY_STORAGE_CONNECTION_STRING = azurite_connection_string(free_port())
    else:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        settings.SECONDARY_STORAGE_DIR = blocker / "secondary"  # unusable
    assert services.replicate_machine(machine=web01) is None
    web01.vault.refresh_from_db()
    assert web01.vault.secondary_error and web01.vault.secondary_checked_at
    state = ReplicaState.objects.get(machine=web01)
    assert state.pending_blobs == len(PACKS) + 4 and "unavailable" in state.error
    assert not Alert.objects.filter(kind=Alert.Kind.REPLICATION_LAG).exists()  # young yet

    ReplicaState.objects.filter(pk=state.pk).update(
        oldest_pending_at=timezone.now() - timedelta(hours=2)
    )
    services.replicate_machine(machine=web01)
    alert = Alert.objects.get(kind=Alert.Kind.REPLICATION_LAG, resolved_at__isnull=True)
    assert alert.severity == Alert.Severity.WARNING and alert.machine == web01
    assert "120 minutes behind" in alert.message

    settings.SECONDARY_STORAGE_DIR, settings.SECONDARY_STORAGE_CONNECTION_STRING = good
    assert services.replicate_machine(machine=web01).status == Job.Status.COMPLETED
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    web01.vault.refresh_from_db()
    assert web01.vault.secondary_error == ""


def test_retention_and_pack_collection_delete_on_both_sides(web01):
    services.replicate_machine(machine=web01)
    now = timezone.now() + timedelta(days=400)
    RecoveryPoint.objects.create(
        machine=web01,
        vault=web01.vault,
        snapshot_id=SNAPSHOT,
        manifest_blob=layout.manifest_blob(SNAPSHOT),
        created_at=now - timedelta(days=200),
        tagged_for=now - timedelta(days=200),
        kind=RecoveryPoint.Kind.ADHOC,
        expires_at=now - timedelta(days=1),
        pack_ids=PACKS[:2],
    )
    keep = RecoveryPoint.objects.create(
        machine=web01,
        vault=web01.vault,
        snapshot_id="6" * 32,
        manifest_blob=layout.manifest_blob("6" * 32),
        created_at=now - timedelta(hours=1),
        tagged_for=now - timedelta(hours=1),
        kind=RecoveryPoint.Kind.ADHOC,
        pack_ids=PACKS[1:2],
    )
    removed = services.retention_apply(machine=web01, now=now)
    assert [p.snapshot_id for p in removed] == [SNAPSHOT]
    for side in (primary_blobs(web01), secondary_blobs(web01)):
        assert layout.manifest_blob(SNAPSHOT) not in side
        assert layout.pack_blob(PACKS[0]) not in side  # unreferenced: collected
        assert layout.pack_blob(PACKS[1]) in side  # the kept point's
    assert keep.pack_ids == PACKS[1:2]


def test_what_the_secondary_could_not_delete_is_deleted_by_the_next_pass(web01, monkeypatch):
    services.replicate_machine(machine=web01)
    name = layout.pack_blob(PACKS[0])
    monkeypatch.setattr(
        replication, "delete_on_secondary", lambda **kw: dict.fromkeys(kw["names"], "away")
    )
    replication.secondary_delete(machine=web01, names=[name])
    assert ReplicaState.objects.get(machine=web01).pending_deletes == [name]
    monkeypatch.undo()
    with storage.primary_account().store(web01.container) as store:
        store.delete(name)
    services.replicate_machine(machine=web01)
    assert name not in secondary_blobs(web01)
    assert ReplicaState.objects.get(machine=web01).pending_deletes == []


def test_a_vault_that_is_not_geo_redundant_is_not_copied(web01):
    Vault.objects.filter(pk=web01.vault_id).update(redundancy=Vault.Redundancy.LOCAL)
    web01.vault.refresh_from_db()
    assert services.replicate_machine(machine=web01) is None
    assert services.replicate_all() == 0


def test_replicate_all_covers_every_container_and_fails_abandoned_jobs(web01, vault):
    other = make_machine(web01.vault, name="web-02")
    with storage.primary_account().store(other.container) as store:
        store.put(layout.CONFIG_BLOB, b"c")
    stale = Job.objects.create(
        vault=vault,
        machine=web01,
        operation=Job.Operation.REPLICATE,
        status=Job.Status.RUNNING,
        last_report_at=timezone.now() - timedelta(hours=1),
    )
    assert services.replicate_all() == 2
    stale.refresh_from_db()
    assert stale.status == Job.Status.FAILED and "next pass copies what is left" in stale.error


def test_which_points_the_secondary_can_restore(web01):
    point = RecoveryPoint.objects.create(
        machine=web01,
        vault=web01.vault,
        snapshot_id=SNAPSHOT,
        manifest_blob=layout.manifest_blob(SNAPSHOT),
        created_at=timezone.now(),
        tagged_for=timezone.now(),
        kind=RecoveryPoint.Kind.ADHOC,
    )
    storage.secondary_account().create_container(web01.container)
    assert not services.point_replicated(point)
    services.replicate_machine(machine=web01)
    assert services.point_replicated(point)
    assert services.replicated_manifests(web01) == {layout.manifest_blob(SNAPSHOT)}


def test_a_recorded_point_of_a_geo_redundant_vault_starts_a_pass_at_once(web01, _jobs_env):
    job = services.backup_start(machine=web01)
    services.job_mark_started(job=job)
    services.job_finish(
        job=job,
        status=Job.Status.COMPLETED,
        snapshot_id=SNAPSHOT,
        manifest_blob=layout.manifest_blob(SNAPSHOT),
        pack_ids=PACKS,
    )
    assert ("replicate_machine", (str(web01.pk),)) in _jobs_env


def test_deleting_a_machines_blobs_everywhere_for_other_callers(web01):
    """The entry for code that removes a machine's data (retention's own path is above)."""
    from vaults.storage.replicas import delete_blobs_everywhere

    services.replicate_machine(machine=web01)
    names = [layout.pack_blob(PACKS[0]), layout.pack_blob(PACKS[1]), "data/zz/absent"]
    done = replication.delete_on_both_sides(machine=web01, names=names[:1])
    assert done == names[:1]
    result = delete_blobs_everywhere(vault=web01.vault, container=web01.container, names=names)
    assert result.primary == names and not result.primary_failed and not result.secondary_failed
    for side in (primary_blobs(web01), secondary_blobs(web01)):
        assert not set(names) & set(side) and layout.pack_blob(PACKS[2]) in side


def test_a_replicate_job_offers_no_cancel_the_portal_could_not_honour(web01, client, alice):
    job = Job.objects.create(
        vault=web01.vault, machine=web01, operation=Job.Operation.REPLICATE,
        status=Job.Status.RUNNING, last_report_at=timezone.now(),
    )  # fmt: skip
    with pytest.raises(services.JobNotCancellable, match="not cancelled"):
        services.job_cancel(job=job, user=alice)
    client.force_login(alice)
    body = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert 'data-action="cancel"' not in body and "Replicate" in body
