"""Restore drills in the portal: started on demand and on schedule, on this machine or
another one of the vault (the policy's authorisation), the agent's evidence checked before it
is kept, alerts for a failed or missed drill, and the machine page's proof."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import SourceGrantAuthorisation
from agents.runtime import protocol
from jobs import services
from jobs.models import Alert, BackupPolicy, Job, RecoveryPoint
from jobs.recovery import services as recovery
from jobs.services import drills
from portal.models import Role
from tests.jobs.conftest import make_machine, spec, token_for
from tests.support import builders

pytestmark = pytest.mark.django_db

POINT = "ab" * 16
GB = 1000**3


def point_of(machine, snapshot=POINT, *, days_ago=1, files=1000, size=10 * GB) -> RecoveryPoint:
    at = timezone.now() - timedelta(days=days_ago)
    return RecoveryPoint.objects.create(
        machine=machine, vault=machine.vault, snapshot_id=snapshot,
        manifest_blob=f"snapshots/{snapshot}", created_at=at, tagged_for=at,
        kind=RecoveryPoint.Kind.ADHOC, logical_bytes=size, file_count=files,
    )  # fmt: skip


def evidence(**changes) -> dict:
    stats = {
        "files": 30, "bytes": 500 * 1000**2, "restore_ms": 5000, "verify_ms": 900,
        "mismatches": 0, "point_files": 1000, "point_bytes": 10 * GB, "over_cap": 0,
    }  # fmt: skip
    stats.update(changes)
    return stats


def post_result(client, machine, job, *, status="completed", point=POINT, stats=None, **extra):
    return client.post(
        f"/api/agent/jobs/{job.pk}/result/",
        data=json.dumps({"status": status, "recovery_point_id": point,
                         "stats": evidence() if stats is None else stats, **extra}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_for(machine)}",
    )  # fmt: skip


@pytest.fixture
def backed_up(machine, policy):
    point_of(machine)
    return machine


@pytest.fixture
def running(backed_up):
    job = services.drill_start(machine=backed_up)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, started_at=timezone.now())
    job.refresh_from_db()
    return job


# -- starting ---------------------------------------------------------------------------------------
def test_a_drill_of_the_latest_point_is_sent_to_the_machine(backed_up, sent, alice):
    point_of(backed_up, "cd" * 16, days_ago=5)
    job = services.drill_start(machine=backed_up, user=alice)
    assert job.operation == Job.Operation.DRILL and job.machine_id == backed_up.pk
    assert job.status == Job.Status.QUEUED and job.details["recovery_point"] == POINT
    (machine_id, task, kwargs) = sent[-1]
    assert (machine_id, task) == (str(backed_up.pk), protocol.DRILL_TASK)
    assert kwargs == {
        "job_id": str(job.pk), "recovery_point": POINT, "source_machine_id": "",
        "sample": "sample", "percent": 1.0, "cap_bytes": 1024 * 1024 * 1024, "scratch": "",
    }  # fmt: skip
    with pytest.raises(services.DrillRefused, match="already running"):
        services.drill_start(machine=backed_up)


def test_no_drill_without_a_recovery_point(machine, policy):
    with pytest.raises(services.DrillRefused, match="no recovery point yet"):
        services.drill_start(machine=machine)


def test_a_drill_on_another_machine_stands_on_the_contributor_who_chose_it(
    backed_up, vault, sent, member, subscription
):
    other = make_machine(vault, "restore-box")
    contributor = member(Role.CONTRIBUTOR)
    policy = backed_up.backup_policy
    found, problems = services.drill_settings_parse(
        {"drill_machine": str(other.pk), "drill_frequency": "weekly"}, machine=backed_up
    )
    assert problems == {}
    services.drill_settings_save(policy=policy, found=found, user=contributor)
    job = services.drill_start(machine=backed_up)
    assert job.machine_id == other.pk and job.details["source_machine"] == str(backed_up.pk)
    assert sent[-1][0] == str(other.pk) and sent[-1][2]["source_machine_id"] == str(backed_up.pk)
    # The grant the other machine asks for is issued against that authorisation...
    row = SourceGrantAuthorisation.objects.get(job_id=job.pk)
    assert (row.source_id, row.target_id, row.authorised_by) == (
        backed_up.pk,
        other.pk,
        contributor,
    )
    _, grant = recovery.source_grant(machine=other, source_id=str(backed_up.pk))
    assert grant["permissions"] == "rl"
    # ...and once the person who chose it loses the role, no drill (and no grant) follows.
    job.status = Job.Status.COMPLETED
    job.save()
    builders.give_role(user=contributor, subscription=subscription, role=Role.READER)
    with pytest.raises(services.DrillRefused, match="No Contributor or Owner"):
        services.drill_start(machine=backed_up)
    with pytest.raises(recovery.SourceNotAuthorised):
        recovery.source_grant(machine=other, source_id=str(backed_up.pk))


def test_a_backup_operator_cannot_choose_another_machine(backed_up, vault, member):
    other = make_machine(vault, "restore-box")
    found, _ = services.drill_settings_parse({"drill_machine": str(other.pk)}, machine=backed_up)
    with pytest.raises(services.DrillRefused, match="Contributor or Owner"):
        services.drill_settings_save(
            policy=backed_up.backup_policy, found=found, user=member(Role.BACKUP_OPERATOR)
        )


def test_the_policy_refuses_a_machine_of_another_vault_and_bad_figures(backed_up, alice):
    foreign_vault = builders.make_vault(resource_group=backed_up.vault.resource_group, name="v2")
    stranger = make_machine(foreign_vault, "elsewhere")
    _, problems = services.drill_settings_parse(
        {"drill_machine": str(stranger.pk), "drill_percent": "0", "drill_cap_mb": "-5",
         "drill_scratch": "relative/dir", "drill_frequency": "hourly"},
        machine=backed_up,
    )  # fmt: skip
    assert set(problems) == {
        "drill_machine", "drill_percent", "drill_cap_mb", "drill_scratch", "drill_frequency"
    }  # fmt: skip


# -- the evidence -----------------------------------------------------------------------------------
def test_good_evidence_proves_the_machine_restorable(client, running, backed_up, alice):
    answer = post_result(client, backed_up, running)
    assert answer.status_code == 200, answer.content
    running.refresh_from_db()
    assert running.status == Job.Status.COMPLETED
    assert running.details["evidence"]["files"] == 30
    client.force_login(alice)
    page = client.get(reverse("agents:detail", args=[backed_up.pk])).content.decode()
    assert "Last proven restorable" in page
    assert "30 files, 476.8\xa0MB in 5.0 s" in page  # (filesizeformat: MiB)
    assert "would take about 1 min 40 s to restore" in page  # 10 GB at 100 MB/s


ATTACKS = [
    ({"point": "cd" * 16}, "asked for"),  # another point (of another machine, say)
    ({"stats": evidence(point_files=5000)}, "files in a point of 1000"),
    ({"stats": evidence(point_bytes=50 * GB)}, "bytes in a point of"),
    ({"stats": evidence(files=2000)}, "more than the point holds"),
    ({"stats": evidence(bytes=2 * GB)}, "over its cap"),
    ({"stats": evidence(restore_ms=1)}, "faster than any disk"),
    ({"stats": evidence(restore_ms=10**9)}, "longer than the job has run"),
    ({"stats": evidence(mismatches=3)}, "cannot be Completed"),
    ({"stats": evidence(files=0, bytes=0)}, "must have restored files"),
    ({"stats": {"files": 1}}, "lacks"),
]


def test_a_compromised_machine_cannot_post_absurd_evidence(client, backed_up):
    for attack, field in ATTACKS:
        job = services.drill_start(machine=backed_up)
        Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, started_at=timezone.now())
        point = attack.get("point", POINT)
        answer = post_result(client, backed_up, job, point=point, stats=attack.get("stats"))
        assert answer.status_code == 409 and field in answer.json()["message"], field
        job.refresh_from_db()
        assert job.status == Job.Status.FAILED and "refused this drill's evidence" in job.error
        assert "evidence" not in job.details
    assert not Job.objects.filter(operation="drill", status="completed").exists()


def test_a_drill_that_failed_before_any_evidence_keeps_its_reason(client, running, backed_up):
    why = "The restore drill did not start: the scratch folder /srv has 5.2 MB free"
    answer = post_result(client, backed_up, running, status="failed", point=None, stats={},
                         message=why)  # fmt: skip
    assert answer.status_code == 200
    running.refresh_from_db()
    assert running.status == Job.Status.FAILED and running.error == why
    assert Alert.objects.get(machine=backed_up, kind=Alert.Kind.DRILL_FAILED).message.endswith(why)
    answer = post_result(client, backed_up, services.drill_start(machine=backed_up),
                         stats={})  # fmt: skip
    assert answer.status_code == 409  # "Completed" with no evidence proves nothing


def test_another_machine_cannot_post_evidence_for_this_one(client, running, vault):
    intruder = make_machine(vault, "intruder")
    answer = post_result(client, intruder, running)
    assert answer.status_code == 404
    running.refresh_from_db()
    assert running.status == Job.Status.RUNNING


# -- alerts -------------------------------------------------------------------------------------------
def test_a_failed_drill_raises_a_critical_alert_and_a_passed_one_resolves_it(client, backed_up):
    job = services.drill_start(machine=backed_up)
    failed = evidence(mismatches=1, files=29)
    mismatch = [{"path": "/srv/data/a.db", "reason": "the restored bytes 0-9 differ"}]
    post_result(client, backed_up, job, status="failed", stats=failed, warnings=mismatch,
                message="The restore drill found 1 file(s) that do not restore as backed up")  # fmt: skip
    alert = Alert.objects.get(machine=backed_up, kind=Alert.Kind.DRILL_FAILED)
    assert alert.severity == Alert.Severity.CRITICAL and alert.resolved_at is None
    assert "do not restore" in alert.message
    job = services.drill_start(machine=backed_up)
    post_result(client, backed_up, job)
    alert.refresh_from_db()
    assert alert.resolved_at is not None


def test_a_missed_drill_raises_an_alert(backed_up):
    now = timezone.now()
    policy = backed_up.backup_policy
    BackupPolicy.objects.filter(pk=policy.pk).update(drill_since=now - timedelta(days=40))
    RecoveryPoint.objects.filter(machine=backed_up).update(created_at=now - timedelta(days=40))
    assert services.drills_check_missed(now=now) == 1
    alert = Alert.objects.get(machine=backed_up, kind=Alert.Kind.DRILL_MISSED)
    assert "never proven restorable" in alert.message
    # a drill that passed within the period: nothing is missed
    Job.objects.create(
        vault=backed_up.vault, machine=backed_up, operation=Job.Operation.DRILL,
        status=Job.Status.COMPLETED, ended_at=now - timedelta(days=3),
        details={"source_machine": str(backed_up.pk)},
    )  # fmt: skip
    assert services.drills_check_missed(now=now) == 0
    # drills turned off: never missed
    BackupPolicy.objects.filter(pk=policy.pk).update(drill_frequency="off")
    assert services.drills_check_missed(now=now + timedelta(days=90)) == 0


def test_the_scheduler_starts_a_monthly_drill_once(backed_up, sent):
    first = services.drills_schedule()
    assert len(first) == 1 and first[0].trigger == Job.Trigger.SCHEDULED
    assert services.drills_schedule() == []  # a tick run twice starts nothing more
    month_ago = timezone.now() - timedelta(days=31)
    Job.objects.filter(pk=first[0].pk).update(
        status=Job.Status.COMPLETED, created_at=month_ago, scheduled_for=month_ago
    )
    assert len(services.drills_schedule()) == 1  # a month later, the next one


def test_a_drill_ten_days_ago_is_a_weekly_machines_last_and_a_monthly_ones_this_month(
    vault, alice, sent
):
    """The period's drills are looked up for every machine at once: each machine is judged
    by its own drills and its own period, not by another's."""
    ten_days_ago = timezone.now() - timedelta(days=10)
    machines = {}
    for frequency in (BackupPolicy.DrillFrequency.WEEKLY, BackupPolicy.DrillFrequency.MONTHLY):
        machine = make_machine(vault, f"{frequency}-01")
        policy = services.policy_save(machine=machine, spec=spec(), user=alice)
        BackupPolicy.objects.filter(pk=policy.pk).update(drill_frequency=frequency)
        point_of(machine, days_ago=20)
        Job.objects.create(
            vault=vault, machine=machine, operation=Job.Operation.DRILL,
            status=Job.Status.COMPLETED, scheduled_for=ten_days_ago,
            details={"kind": "drill", "source_machine": str(machine.pk),
                     "source_name": machine.name},
        )  # fmt: skip
        machines[frequency] = machine
    started = services.drills_schedule()
    assert [job.machine for job in started] == [machines[BackupPolicy.DrillFrequency.WEEKLY]]


def test_the_first_drill_waits_for_the_backup_time_after_the_first_point(machine, alice, sent):
    """Back up now at 14:10 makes the first point: the drill does not follow at once but at
    the policy's next backup time (02:00 here), then every period at that time."""
    from datetime import UTC, datetime

    from tests.jobs.conftest import spec

    machine.time_zone = "UTC"
    machine.save(update_fields=["time_zone"])
    services.policy_save(machine=machine, spec={**spec(), "times": ["02:00"]}, user=alice)
    first_backup = datetime(2026, 3, 2, 14, 10, tzinfo=UTC)
    RecoveryPoint.objects.create(
        machine=machine, vault=machine.vault, snapshot_id=POINT,
        manifest_blob=f"snapshots/{POINT}", created_at=first_backup, tagged_for=first_backup,
        kind=RecoveryPoint.Kind.ADHOC, logical_bytes=GB, file_count=10,
    )  # fmt: skip
    for minutes in (1, 60, 11 * 60 + 49):  # the afternoon, the evening, 01:59
        assert services.drills_schedule(now=first_backup + timedelta(minutes=minutes)) == []
    slot = datetime(2026, 3, 3, 2, 0, tzinfo=UTC)
    (drill,) = services.drills_schedule(now=slot + timedelta(minutes=3))  # a late tick
    assert drill.scheduled_for == slot and drill.trigger == Job.Trigger.SCHEDULED
    Job.objects.filter(pk=drill.pk).update(status=Job.Status.COMPLETED)
    # The next one a month (30 days) on, at the same backup time, not a day later.
    assert services.drills_schedule(now=slot + timedelta(days=30) - timedelta(minutes=1)) == []
    (second,) = services.drills_schedule(now=slot + timedelta(days=30, seconds=30))
    assert second.scheduled_for == slot + timedelta(days=30)


def test_a_scheduled_drill_waits_for_its_slots_backup_and_proves_its_point(machine, alice, sent):
    """At 02:00 the scheduler starts the backup and, on the same tick, would start the
    drill: the drill waits until that backup ends, then starts, and proves the point the
    backup made. A backup in progress since before the slot holds it too; one queued
    before the slot and still waiting for its agent (stuck) does not."""
    from datetime import UTC, datetime

    from tests.jobs.conftest import spec

    machine.time_zone = "UTC"
    machine.save(update_fields=["time_zone"])
    services.policy_save(machine=machine, spec={**spec(), "times": ["02:00"]}, user=alice)
    slot = datetime(2026, 3, 3, 2, 0, tzinfo=UTC)
    first = point_of(machine)
    RecoveryPoint.objects.filter(pk=first.pk).update(created_at=slot - timedelta(days=3))
    BackupPolicy.objects.filter(machine=machine).update(
        scheduled_through=slot - timedelta(minutes=1)
    )
    started = services.schedule_tick(now=slot + timedelta(seconds=20))
    assert [j.operation for j in started] == [Job.Operation.BACKUP]  # no drill beside it
    (backup,) = started
    Job.objects.filter(pk=backup.pk).update(
        status=Job.Status.RUNNING, created_at=slot + timedelta(seconds=20)
    )
    assert services.drills_schedule(now=slot + timedelta(minutes=30)) == []
    Job.objects.filter(pk=backup.pk).update(
        status=Job.Status.COMPLETED, ended_at=slot + timedelta(minutes=41)
    )
    newest = point_of(machine, "e" * 64, days_ago=0)
    RecoveryPoint.objects.filter(pk=newest.pk).update(created_at=slot + timedelta(minutes=41))
    (drill,) = services.drills_schedule(now=slot + timedelta(minutes=42))
    assert drill.scheduled_for == slot and drill.trigger == Job.Trigger.SCHEDULED
    assert drill.details["recovery_point"] == "e" * 64  # the point that backup made

    # The next slot: a Back up now in progress since before it holds the drill ...
    Job.objects.filter(pk=drill.pk).update(status=Job.Status.COMPLETED)
    next_slot = slot + timedelta(days=30)
    Job.objects.filter(pk=backup.pk).update(
        status=Job.Status.RUNNING, created_at=next_slot - timedelta(hours=5)
    )
    assert services.drills_schedule(now=next_slot + timedelta(minutes=1)) == []
    # ... one queued before it and still waiting for its agent does not.
    Job.objects.filter(pk=backup.pk).update(status=Job.Status.WAITING)
    (later,) = services.drills_schedule(now=next_slot + timedelta(minutes=2))
    assert later.scheduled_for == next_slot


def test_a_scheduled_drill_that_cannot_start_fails_once_with_its_alert(backed_up, vault, alice):
    other = make_machine(vault, "restore-box")
    found, _ = services.drill_settings_parse({"drill_machine": str(other.pk)}, machine=backed_up)
    services.drill_settings_save(policy=backed_up.backup_policy, found=found, user=alice)
    alice.is_active = False  # no longer anyone's say-so
    alice.save()
    assert services.drills_schedule() == [] and services.drills_schedule() == []
    (job,) = Job.objects.filter(operation=Job.Operation.DRILL)
    assert job.status == Job.Status.FAILED and "did not start" in job.error
    alert = Alert.objects.get(machine=backed_up, kind=Alert.Kind.DRILL_FAILED)
    assert alert.occurrences == 1 and "save the backup policy" in alert.message


def test_a_scheduled_drill_that_meets_one_started_meanwhile_is_not_needed(
    backed_up, alice, monkeypatch
):
    # Drill now pressed between the tick's look at the machine's drills and its start: the
    # drill on its way proves the point; no failed scheduled drill, no alert.
    real = drills.drill_start

    def pressed_meanwhile(**kwargs):
        real(machine=kwargs["machine"], user=alice)
        return real(**kwargs)

    monkeypatch.setattr(drills, "drill_start", pressed_meanwhile)
    assert services.drills_schedule() == []
    (job,) = Job.objects.filter(operation=Job.Operation.DRILL)
    assert job.trigger == Job.Trigger.ADHOC and job.status == Job.Status.QUEUED
    assert not Alert.objects.filter(machine=backed_up, kind=Alert.Kind.DRILL_FAILED).exists()


# -- the button ---------------------------------------------------------------------------------------
def test_run_restore_drill_needs_a_backup_operator(client, backed_up, member, charlie):
    url = reverse("jobs:drill_run", args=[backed_up.pk])
    client.force_login(charlie)
    assert client.post(url).status_code == 404
    client.force_login(member(Role.READER))
    assert client.post(url).status_code == 403
    page = client.get(reverse("agents:detail", args=[backed_up.pk])).content.decode()
    assert 'data-action="run-drill"' not in page
    client.force_login(member(Role.BACKUP_OPERATOR))
    page = client.get(reverse("agents:detail", args=[backed_up.pk])).content.decode()
    assert 'data-action="run-drill"' in page
    answer = client.post(url)
    job = Job.objects.get(operation=Job.Operation.DRILL)
    assert answer.status_code == 302 and answer["Location"] == reverse("jobs:detail", args=[job.pk])
    refused = client.post(url, follow=True)
    assert "already running" in refused.content.decode()


def test_the_policy_editor_keeps_the_drill_settings(client, machine, alice):
    client.force_login(alice)
    url = reverse("jobs:policy", args=[machine.pk])
    form = {
        "items": "/srv/data", "frequency": "daily", "times": ["00:00"], "daily_enabled": "on",
        "daily_days": "7", "initial_backup": "online",
    } | {"drill_frequency": "weekly", "drill_sample": "whole",
                            "drill_percent": "2.5", "drill_cap_mb": "200",
                            "drill_scratch": "/var/tmp/drills"}  # fmt: skip
    saved = client.post(url, form)
    assert saved.status_code == 302, re.findall(r"field-error[^>]*>([^<]*)", saved.content.decode())
    policy = BackupPolicy.objects.get(machine=machine)
    assert (policy.drill_frequency, policy.drill_sample, policy.drill_percent) == (
        "weekly", "whole", 2.5
    )  # fmt: skip
    assert (policy.drill_cap_mb, policy.drill_scratch) == (200, "/var/tmp/drills")
    shown = client.get(url).content.decode()
    assert 'name="drill_frequency" value="weekly" checked' in shown
    assert 'value="/var/tmp/drills"' in shown
    # what the scheduler does (test_a_scheduled_drill_waits_for_its_slots_backup_...)
    assert "starts once that backup has finished" in shown
    bad = client.post(url, form | {"drill_scratch": "tmp"})
    assert bad.status_code == 400 and "absolute path" in bad.content.decode()
