"""Verify jobs in the portal: Verify now (who may), the weekly slices (rotation kept across
runs), a damage report marking the machine's points Damaged with a Critical alert, and the
policy editor's "every N weeks"."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.runtime import protocol
from jobs import services
from jobs.models import Alert, BackupPolicy, Job, RecoveryPoint
from portal.models import Role
from tests.jobs.conftest import spec, stored_point, token_for
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db
POINT = "e1" * 16
OLDER = "e0" * 16
PACK = "a1" * 16
WEEK = timedelta(days=7)


@pytest.fixture
def as_alice(client, alice):
    client.force_login(alice)
    return client


@pytest.fixture
def points(machine, policy):
    """Two recovery points of web-01 (the older first)."""
    made = []
    for snapshot in (OLDER, POINT):
        stored_point(machine, snapshot, [PACK])
        job = services.backup_start(machine=machine)
        services.job_finish(job=job, status="completed", snapshot_id=snapshot, pack_ids=[PACK])
        made.append(RecoveryPoint.objects.get(snapshot_id=snapshot))
    return made


def result(client, job, **body):
    return client.post(
        f"/api/agent/jobs/{job.pk}/result/",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_for(job.machine)}",
    )


def damage_report(point=POINT, path="/srv/data/report.pdf"):
    return [
        {
            "pack": PACK,
            "reason": "chunk at offset 20: does not authenticate",
            "recovery_points": [point],
            "files": [{"recovery_point": point, "path": path}],
        }
    ]


def test_verify_now_for_operators_refused_to_readers_hidden_from_outsiders(
    client, member, charlie, machine, points, sent
):
    url = f"/jobs/machines/{machine.pk}/verify-now/"
    client.force_login(charlie)
    assert client.post(url).status_code == 404
    client.force_login(member(Role.READER))
    assert client.post(url).status_code == 403
    page = client.get(f"/machines/{machine.pk}/").content.decode()
    assert 'data-action="verify-now"' not in page
    assert not Job.objects.filter(operation=Job.Operation.VERIFY).exists()
    client.force_login(member(Role.BACKUP_OPERATOR))
    response = client.post(url)
    job = Job.objects.get(operation=Job.Operation.VERIFY)
    assert response.status_code == 302 and response.url == f"/jobs/{job.pk}/"
    assert job.details == {"slices": 1, "slice": 0} and job.trigger == Job.Trigger.ADHOC
    assert sent[-1] == (str(machine.pk), protocol.VERIFY_TASK, {"job_id": str(job.pk)})
    assert ActivityEntry.objects.filter(operation="verify.now").exists()
    # a second one while it runs is refused in words, on the machine page
    again = client.post(url, follow=True)
    assert "already queued" in again.content.decode()
    assert Job.objects.filter(operation=Job.Operation.VERIFY).count() == 1


def test_nothing_to_verify_before_the_first_point(as_alice, machine, policy):
    response = as_alice.post(f"/jobs/machines/{machine.pk}/verify-now/", follow=True)
    assert "no recovery point yet" in response.content.decode()
    assert not Job.objects.filter(operation=Job.Operation.VERIFY).exists()


def test_damage_marks_the_points_raises_a_critical_alert_and_shows(
    client, as_alice, machine, points
):
    job = services.verify_start(machine=machine)
    message = "Damage found: pack a1a1…: chunk does not authenticate"
    answer = result(
        client,
        job,
        status="failed",
        message=message,
        stats={"packs_checked": 3, "packs_total": 3},
        damage=damage_report(),
    )
    assert answer.status_code == 200, answer.content
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and job.error == message
    damaged = RecoveryPoint.objects.get(snapshot_id=POINT)
    assert damaged.is_damaged and damaged.verify_damage["files"] == ["/srv/data/report.pdf"]
    assert damaged.verify_damage["packs"] == [PACK]
    assert not RecoveryPoint.objects.get(snapshot_id=OLDER).is_damaged
    alert = Alert.objects.get(kind=Alert.Kind.VERIFY_DAMAGE, resolved_at=None)
    assert alert.severity == Alert.Severity.CRITICAL and message in alert.message
    listing = as_alice.get(f"/jobs/machines/{machine.pk}/recovery-points/").content.decode()
    assert listing.count('data-field="damaged"') == 1 and "/srv/data/report.pdf" in listing
    page = as_alice.get(f"/machines/{machine.pk}/").content.decode()
    assert "1 damaged recovery point" in page
    # a verify of every pack that finds nothing clears the marks and the alert
    clean = services.verify_start(machine=machine)
    result(client, clean, status="completed", stats={"packs_checked": 3, "packs_total": 3})
    assert not RecoveryPoint.objects.filter(verify_damaged_at__isnull=False).exists()
    alert.refresh_from_db()
    assert alert.resolved_at is not None


def test_a_verify_that_cannot_run_is_a_warning_and_marks_nothing(client, machine, points):
    job = services.verify_start(machine=machine)
    result(client, job, status="failed", message="The vault's storage could not be used: gone")
    alert = Alert.objects.get(kind=Alert.Kind.VERIFY_FAILED)
    assert alert.severity == Alert.Severity.WARNING and "storage could not be used" in alert.message
    assert not RecoveryPoint.objects.filter(verify_damaged_at__isnull=False).exists()


def test_damage_reported_after_the_sweep_failed_the_job_is_still_marked(client, machine, points):
    job = services.verify_start(machine=machine)
    services.job_fail(job=job, reason="The agent stopped reporting.")
    body = {"status": "failed", "message": "Damage found: pack a1.", "damage": damage_report()}
    assert result(client, job, **body).status_code == 200
    job.refresh_from_db()
    assert job.error.startswith("The agent stopped reporting.") and "found damage" in job.error
    assert RecoveryPoint.objects.get(snapshot_id=POINT).is_damaged
    assert Alert.objects.get(kind=Alert.Kind.VERIFY_DAMAGE).severity == Alert.Severity.CRITICAL


def test_the_weekly_rotation_reads_the_next_slice_only_once_the_last_was_read(
    client, machine, points, sent
):
    policy = BackupPolicy.objects.get(machine=machine)
    services.verify_weeks_set(policy=policy, weeks=2)
    now = timezone.now()
    assert services.verify_schedule_tick(now=now) == []  # the first one is a week out
    policy.refresh_from_db()
    assert policy.verify_due_at == now + WEEK

    def tick(at):
        return services.verify_schedule_tick(now=at)

    (first,) = tick(now + WEEK)
    assert tick(now + WEEK) == []  # a second tick starts nothing twice
    assert first.trigger == Job.Trigger.SCHEDULED and first.details == {"slices": 2, "slice": 0}
    # the agent was away: the run is swept, the slice stays
    services.job_fail(job=first, reason="The agent did not pick up this job")
    (second,) = tick(now + 2 * WEEK)
    assert second.details["slice"] == 0
    result(client, second, status="completed", stats={"packs_checked": 1, "packs_total": 2})
    (third,) = tick(now + 3 * WEEK)
    assert third.details["slice"] == 1
    result(client, third, status="completed", stats={"packs_checked": 1, "packs_total": 2})
    (fourth,) = tick(now + 4 * WEEK)
    assert fourth.details["slice"] == 0  # round again: every pack read in 2 weeks
    assert [s[1] for s in sent].count(protocol.VERIFY_TASK) == 4


def test_no_scheduled_verify_of_a_stopped_or_unbacked_machine(machine, policy):
    BackupPolicy.objects.filter(pk=policy.pk).update(verify_due_at=timezone.now() - WEEK)
    assert services.verify_schedule_tick() == []  # no point yet


def test_the_policy_editor_shows_and_saves_n_weeks(as_alice, machine):
    url = f"/jobs/machines/{machine.pk}/policy/"
    page = as_alice.get(url).content.decode()
    assert 'name="verify_weeks"' in page and 'value="4"' in page
    form = {
        "items": "/srv/data",
        "frequency": "daily",
        "times": ["21:00"],
        "daily_enabled": "on",
        "daily_days": "30",
        "initial_backup": "online",
    }
    bad = as_alice.post(url, {**form, "verify_weeks": "0"})
    assert bad.status_code == 400 and "from 1 to 52" in bad.content.decode()
    assert as_alice.post(url, {**form, "verify_weeks": "6"}).status_code == 302
    policy = BackupPolicy.objects.get(machine=machine)
    assert policy.verify_weeks == 6
    BackupPolicy.objects.filter(pk=policy.pk).update(verify_slice=3)
    assert as_alice.post(url, {**form, "verify_weeks": "5"}).status_code == 302
    policy.refresh_from_db()
    assert (policy.verify_weeks, policy.verify_slice) == (5, 0)  # the rotation starts again
    page = as_alice.get(f"/machines/{machine.pk}/").content.decode()
    assert "All backup data read back every 5 weeks" in page


def test_the_wizard_warns_before_restoring_a_damaged_point(as_alice, machine, points):
    RecoveryPoint.objects.filter(snapshot_id=POINT).update(
        verify_damaged_at=timezone.now(), verify_damage={"files": ["/srv/data/report.pdf"]}
    )
    page = as_alice.get(f"/recover/{machine.pk}/to/{machine.pk}/").content.decode()
    assert 'data-damaged="/srv/data/report.pdf"' in page
    assert 'data-field="damaged-warning"' in page and page.count('data-field="damaged"') == 1


def test_spec_is_unchanged_by_verify_fields(policy):
    assert "verify_weeks" not in policy.spec()
    assert policy.spec() == BackupPolicy.objects.get(pk=policy.pk).spec()
    assert spec()["items"] == ["/srv/data"]
