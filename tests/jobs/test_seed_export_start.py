"""What Back up now and the scheduler start for a machine whose policy makes the first
backup Offline (docs/seeding.md): with a seed staging folder, an offline backup to disk the
agent writes there (the result recorded on the job, no point); without one, nothing, and a
409 that tells both ways."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agents.runtime import protocol
from jobs import services
from jobs.models import BackupPolicy, Job, RecoveryPoint
from portal.models import Role
from tests.jobs.conftest import spec

pytestmark = pytest.mark.django_db

FOLDER = "/mnt/seed-disk/web-01"
POINT = "ab" * 16


def _offline(machine, alice, **changes):
    return services.policy_save(
        machine=machine, spec=spec(initial_backup="offline", **changes), user=alice
    )


def _written(job):
    """The agent's result for an offline backup to disk."""
    return services.job_finish(
        job=job,
        status=Job.Status.COMPLETED,
        stats={"files": 12, "logical_bytes": 3 << 20, "stored_bytes": 3_200_000, "blobs": 9},
        snapshot_id=POINT,
        manifest_blob=f"snapshots/{POINT}",
        pack_ids=["cd" * 32],
    )


def test_back_up_now_with_a_staging_folder_has_the_agent_write_the_seed_there(
    client, machine, alice, member, sent
):
    _offline(machine, alice, seed_staging=FOLDER)
    url = f"/jobs/machines/{machine.pk}/backup-now/"
    client.force_login(member(Role.READER))
    assert client.post(url).status_code == 403
    client.force_login(member(Role.BACKUP_OPERATOR))
    page = client.get(url)
    assert b"Offline backup to disk" in page.content and FOLDER.encode() in page.content
    answer = client.post(url)
    job = Job.objects.get(machine=machine)
    assert answer.status_code == 302 and answer["Location"] == f"/jobs/{job.pk}/"
    assert job.operation == Job.Operation.SEED_EXPORT
    assert job.details == {protocol.SEED_FOLDER: FOLDER}
    assert sent[-1] == (str(machine.pk), protocol.SEED_EXPORT_TASK, {"job_id": str(job.pk)})
    # One at a time, like backups.
    assert client.post(url).status_code == 409
    with pytest.raises(services.BackupAlreadyRunning):
        services.backup_start(machine=machine)

    job = _written(job)
    assert job.status == Job.Status.COMPLETED
    assert job.details["seed"] == {
        "recovery_point_id": POINT,
        "files": 12,
        "logical_bytes": 3 << 20,
        "stored_bytes": 3_200_000,
        "blobs": 9,
    }
    assert job.bytes_transferred == 3_200_000
    assert not RecoveryPoint.objects.filter(machine=machine).exists()  # the import records it
    detail = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f"Seed written to <code>{FOLDER}</code> on web-01 at" in detail
    assert "ship the disk and import it" in detail and "manage.py seed_import PATH" in detail
    seeding = client.get(f"/jobs/machines/{machine.pk}/seeding/").content.decode()
    assert f"Seed written to <code>{FOLDER}</code> on web-01 at" in seeding
    machine_page = client.get(f"/machines/{machine.pk}/").content.decode()
    assert "Seed written</span>" in machine_page

    # Again before the import: the agent adds to the same folder (docs/seeding.md).
    page = client.get(url)
    assert b'data-field="seed-written"' in page.content
    again = services.backup_start(machine=machine)
    assert again.operation == Job.Operation.SEED_EXPORT and again.pk != job.pk


def test_a_forged_point_id_in_the_result_is_not_kept(machine, alice):
    _offline(machine, alice, seed_staging=FOLDER)
    job = services.backup_start(machine=machine)
    job = services.job_finish(
        job=job, status=Job.Status.COMPLETED, stats={"files": 1}, snapshot_id="../" * 11
    )
    assert job.details["seed"]["recovery_point_id"] == ""
    assert not RecoveryPoint.objects.exists()


def test_without_a_staging_folder_back_up_now_answers_409_telling_both_ways(
    client, machine, alice, sent
):
    _offline(machine, alice)
    client.force_login(alice)
    answer = client.post(f"/jobs/machines/{machine.pk}/backup-now/")
    assert answer.status_code == 409
    text = answer.content.decode()
    assert "names no seed staging folder" in text and "haven-agent seed export --to PATH" in text
    assert not Job.objects.exists()
    assert [task for _, task, _ in sent] == [protocol.POLICY_TASK]  # the policy, no backup
    with pytest.raises(services.SeedPending, match="name one in the backup policy"):
        services.backup_start(machine=machine)


def _tick(policy, at):
    BackupPolicy.objects.filter(pk=policy.pk).update(
        scheduled_through=datetime(2024, 10, 26, 12, tzinfo=UTC)
    )
    return services.schedule_tick(now=at)


def test_the_schedule_writes_the_seed_once_and_then_waits_for_the_import(machine, alice, sent):
    due = datetime(2024, 10, 26, 23, 30, tzinfo=UTC)  # 01:30 in Amsterdam
    policy = _offline(machine, alice, times=["01:30"])
    assert _tick(policy, due) == []  # no staging folder: nothing the portal can start

    policy = _offline(machine, alice, times=["01:30"], seed_staging=FOLDER)
    (job,) = _tick(policy, due)
    assert (job.operation, job.trigger) == (Job.Operation.SEED_EXPORT, Job.Trigger.SCHEDULED)
    assert sent[-1][1] == protocol.SEED_EXPORT_TASK
    _written(job)
    # The seed is on its way: the next scheduled time starts nothing.
    assert _tick(policy, datetime(2024, 10, 27, 23, 30, tzinfo=UTC)) == []
    assert Job.objects.filter(machine=machine).count() == 1


def test_stopping_protection_cancels_a_queued_offline_backup(machine, alice):
    _offline(machine, alice, seed_staging=FOLDER)
    job = services.backup_start(machine=machine)
    services.protection_stop(machine=machine, user=alice, retention="forever")
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    with pytest.raises(services.ProtectionStopped):
        services.backup_start(machine=machine)
