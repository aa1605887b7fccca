"""A compromised machine reports recovery points: it may only ever touch its own, and only new
ones. Each attack posts a job result to the real agent API (``/api/agent/jobs/<id>/result/``)
with the machine's own token, then checks what the victim would notice: its point's row and
its packs in storage."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.runtime.engine import layout
from jobs import services
from jobs.models import Job, RecoveryPoint
from tests.jobs import conftest as jobs_conftest
from tests.jobs.conftest import make_machine, spec, stored_point, token_for
from vaults import storage

pytestmark = pytest.mark.django_db
# The jobs app's fixtures: agent tasks and portal tasks recorded, pushes captured.
_jobs_env, pushes, sent = jobs_conftest._jobs_env, jobs_conftest.pushes, jobs_conftest.sent

VICTIM_POINT = "a0" * 16
VICTIM_PACKS = ["a1" * 16, "a2" * 16]
ATTACKER_PACK = "b1" * 16


@pytest.fixture
def machine(vault):
    return make_machine(vault)


@pytest.fixture
def policy(machine, alice):
    return services.policy_save(machine=machine, spec=spec(), user=alice)


def post_result(client, machine, job, **result):
    body = {"status": "completed", "warnings": [], "stats": {"files": 1}, **result}
    return client.post(
        f"/api/agent/jobs/{job.pk}/result/",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_for(machine)}",
    )


def packs_on_disk(machine) -> set[str]:
    with storage.primary_account().store(machine.container) as store:
        return {layout.pack_id_of(b.name) for b in store.list(layout.DATA_PREFIX)}


@pytest.fixture
def victim(machine, policy):
    """web-01 with one recorded recovery point, its manifest and packs in its container."""
    stored_point(machine, VICTIM_POINT, VICTIM_PACKS)
    job = services.backup_start(machine=machine)
    services.job_finish(
        job=job, status="completed", snapshot_id=VICTIM_POINT, pack_ids=VICTIM_PACKS
    )
    return RecoveryPoint.objects.get(snapshot_id=VICTIM_POINT)


@pytest.fixture
def attacker(vault):
    """db-01 in the same vault, with a backup job of its own running."""
    other = make_machine(vault, "db-01")
    services.policy_save(machine=other, spec=spec())
    job = services.backup_start(machine=other)
    services.job_mark_started(job=job)
    return other, job


def assert_untouched(point: RecoveryPoint) -> None:
    before = (point.machine_id, point.job_id, point.pack_ids, point.manifest_blob)
    point.refresh_from_db()
    assert (point.machine_id, point.job_id, point.pack_ids, point.manifest_blob) == before
    assert point.removed_at is None


def test_a_machine_cannot_take_over_another_machines_recovery_point(
    client, victim, attacker, caplog, settings
):
    other, job = attacker
    # The attacker even plants a manifest of that name in its own container.
    stored_point(other, VICTIM_POINT, [ATTACKER_PACK])
    with caplog.at_level(logging.WARNING, logger="jobs.services.points"):
        answer = post_result(
            client,
            other,
            job,
            recovery_point_id=VICTIM_POINT,
            manifest_blob=layout.manifest_blob(VICTIM_POINT),
            pack_ids=[ATTACKER_PACK],
        )
    assert answer.status_code == 409
    assert "another machine" in answer.json()["message"]
    assert_untouched(victim)
    assert victim.machine.name == "web-01"
    assert not RecoveryPoint.objects.filter(machine=other).exists()
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "refused" in job.error
    assert any(str(job.pk) in r.getMessage() for r in caplog.records)
    # The victim's packs survive the collection that follows, long after the grace period.
    later = timezone.now() + timedelta(hours=3 * settings.HAVEN_GC_GRACE_HOURS)
    services.packs_collect(machine=victim.machine, now=later)
    assert set(VICTIM_PACKS) <= packs_on_disk(victim.machine)


def test_a_machine_cannot_overwrite_its_own_snapshot(client, victim, machine, settings):
    """A later job re-reports an earlier point with a shorter pack list, so that collection
    would delete the packs the earlier point needs."""
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    answer = post_result(
        client,
        machine,
        job,
        recovery_point_id=VICTIM_POINT,
        manifest_blob=layout.manifest_blob(VICTIM_POINT),
        pack_ids=[VICTIM_PACKS[0]],
    )
    assert answer.status_code == 409
    assert "already recorded" in answer.json()["message"]
    assert_untouched(victim)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    # Collection, even long after the grace period, keeps both packs.
    later = timezone.now() + timedelta(hours=settings.HAVEN_GC_GRACE_HOURS * 3)
    services.packs_collect(machine=machine, now=later)
    assert set(VICTIM_PACKS) <= packs_on_disk(machine)


def test_a_restore_job_cannot_make_a_recovery_point(client, machine, policy):
    stored_point(machine, "c0" * 16, [ATTACKER_PACK])
    restore = Job.objects.create(
        vault=machine.vault,
        machine=machine,
        operation=Job.Operation.RESTORE,
        status=Job.Status.RUNNING,
    )
    answer = post_result(
        client, machine, restore, recovery_point_id="c0" * 16, pack_ids=[ATTACKER_PACK]
    )
    assert answer.status_code == 409
    assert "Only a backup or seed import job" in answer.json()["message"]
    assert not RecoveryPoint.objects.exists()


@pytest.mark.parametrize(
    "manifest_blob",
    ["config", "keys/0123456789abcdef", layout.pack_blob("a1" * 16), "snapshots/../config"],
)
def test_a_point_cannot_name_a_blob_outside_snapshots_for_retention_to_delete(
    client, victim, machine, manifest_blob
):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    stored_point(machine, "c0" * 16)
    answer = post_result(
        client, machine, job, recovery_point_id="c0" * 16, manifest_blob=manifest_blob
    )
    assert answer.status_code == 400
    assert "manifest_blob must be" in answer.json()["message"]
    assert not RecoveryPoint.objects.filter(snapshot_id="c0" * 16).exists()


@pytest.mark.parametrize("point_id", ["../" * 5 + "config", "A0" * 16, "a0" * 15, ""])
def test_a_point_id_that_is_not_the_engines_is_refused(client, machine, policy, point_id):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    answer = post_result(client, machine, job, recovery_point_id=point_id or "x")
    assert answer.status_code == 400
    assert not RecoveryPoint.objects.exists()


def test_a_point_cannot_claim_packs_of_another_machines_container(client, victim, attacker):
    """The victim's packs exist, but not in the attacker's container: were they accepted,
    retention of the attacker's points would decide nothing about them, and the point
    would promise data the attacker's repository does not hold."""
    other, job = attacker
    stored_point(other, "c0" * 16)
    answer = post_result(client, other, job, recovery_point_id="c0" * 16, pack_ids=VICTIM_PACKS)
    assert answer.status_code == 409
    assert "do not exist in this machine's storage" in answer.json()["message"]
    assert not RecoveryPoint.objects.filter(machine=other).exists()


@pytest.mark.parametrize("pack_id", ["../../config", "A1" * 16, "a1", 7])
def test_pack_ids_that_are_not_the_engines_are_refused(client, machine, policy, pack_id):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    stored_point(machine, "c0" * 16)
    answer = post_result(client, machine, job, recovery_point_id="c0" * 16, pack_ids=[pack_id])
    assert answer.status_code == 400
    assert not RecoveryPoint.objects.exists()


def test_a_point_whose_manifest_is_not_in_storage_is_refused(client, machine, policy):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    answer = post_result(client, machine, job, recovery_point_id="c0" * 16)
    assert answer.status_code == 409
    assert not RecoveryPoint.objects.exists()


def test_a_result_delivered_twice_changes_nothing(client, machine, policy):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    stored_point(machine, "c0" * 16, VICTIM_PACKS)
    result = {"recovery_point_id": "c0" * 16, "pack_ids": VICTIM_PACKS}
    assert post_result(client, machine, job, **result).json() == {"status": "completed"}
    point = RecoveryPoint.objects.get(job=job)
    job.refresh_from_db()
    ended = job.ended_at
    again = post_result(client, machine, job, **result)
    assert again.status_code == 200 and again.json() == {"status": "completed"}
    job.refresh_from_db()
    assert job.ended_at == ended
    assert list(RecoveryPoint.objects.values_list("pk", flat=True)) == [point.pk]


def test_a_finished_job_cannot_record_a_second_point(client, victim, machine):
    job = victim.job
    stored_point(machine, "c0" * 16, [VICTIM_PACKS[0]])
    answer = post_result(
        client, machine, job, recovery_point_id="c0" * 16, pack_ids=[VICTIM_PACKS[0]]
    )
    assert answer.status_code == 409
    assert not RecoveryPoint.objects.filter(snapshot_id="c0" * 16).exists()
    assert_untouched(victim)
