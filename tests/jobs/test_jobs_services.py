"""Jobs from Back up now to their final state: one at a time, progress, cancel, offline."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs import selectors, services
from jobs.models import Alert, Job, RecoveryPoint, ScheduledRun
from tests.jobs.conftest import make_machine, stored_point

P1, P2 = "a1" * 16, "a2" * 16

pytestmark = pytest.mark.django_db


def test_back_up_now_queues_a_job_and_sends_it_to_the_agent(machine, policy, alice, sent):
    job = services.backup_start(machine=machine, user=alice)
    assert (job.status, job.operation, job.trigger) == ("queued", "backup", "adhoc")
    assert sent[-1] == (str(machine.pk), "haven.agent.backup", {"job_id": str(job.pk)})


def test_one_backup_per_machine_at_a_time(machine, policy):
    first = services.backup_start(machine=machine)
    with pytest.raises(services.BackupAlreadyRunning) as caught:
        services.backup_start(machine=machine)
    assert caught.value.job == first


def test_an_offline_machine_gets_waiting_for_agent(vault, alice):
    machine = make_machine(vault, "laptop", online=False)
    job = services.backup_start(machine=machine, user=alice)
    assert job.get_status_display() == "Waiting for agent"


def test_retain_till_in_the_past_is_refused(machine, policy):
    with pytest.raises(ValidationError):
        services.backup_start(machine=machine, retain_until=date(2000, 1, 1))


def test_back_up_now_is_told_what_backup_start_would_refuse(machine, policy):
    assert selectors.backup_blockers(machine=machine) == selectors.BackupBlockers(None, "")
    past = selectors.backup_blockers(machine=machine, retain_until=date(2000, 1, 1))
    assert past.retain_until == "Choose today or a later date."
    first = services.backup_start(machine=machine)
    assert selectors.backup_blockers(machine=machine).running == first


def test_progress_is_stored_and_pushed_to_the_job_and_the_vault(
    machine, policy, pushes, django_capture_on_commit_callbacks
):
    job = services.backup_start(machine=machine)
    event = {
        "type": "progress",
        "phase": "backing_up",
        "files_done": 3,
        "files_total": 10,
        "bytes_done": 300,
        "bytes_total": 1000,
        "stored_bytes": 120,
        "rate_bps": 50,
        "eta_s": 14.0,
        "current": "/srv/data/a.txt",
        "secret": "dropped",
    }
    with django_capture_on_commit_callbacks(execute=True):
        cancel = services.job_record_progress(job=job, event=event)
    assert cancel is False
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.started_at is not None
    assert job.progress["files_done"] == 3 and "secret" not in job.progress
    assert job.bytes_transferred == 120
    groups = [group for group, _ in pushes]
    assert f"job.{job.pk}" in groups and f"vault.{job.vault_id}" in groups
    html = dict(pushes)[f"job.{job.pk}"]
    assert 'hx-swap-oob="true"' in html and "30%" in html and "/srv/data/a.txt" in html


def finish(job, **kwargs):
    defaults = {
        "status": "completed",
        "snapshot_id": "ab" * 16,
        "pack_ids": [P1, P2],
        "stats": {"logical_bytes": 1000, "new_bytes": 400, "added_bytes": 300, "files": 3},
    }
    defaults.update(kwargs)
    if defaults.get("snapshot_id"):
        stored_point(job.machine, defaults["snapshot_id"], defaults["pack_ids"])
    return services.job_finish(job=job, **defaults)


def test_a_completed_backup_makes_a_tagged_recovery_point(machine, policy, _jobs_env):
    job = services.backup_start(machine=machine)
    job = finish(job)
    point = RecoveryPoint.objects.get(job=job)
    assert point.kind == "adhoc" and point.retention_tags == ["daily"]
    assert point.expires_at == point.tagged_for + timedelta(days=7)
    assert (point.logical_bytes, point.new_bytes, point.stored_bytes) == (1000, 400, 300)
    assert point.pack_ids == [P1, P2]
    assert point.manifest_blob == "snapshots/" + "ab" * 16
    assert ("retention_apply_machine", (str(machine.pk),)) in _jobs_env


def test_warnings_make_completed_with_warnings_and_a_warning_alert(machine, policy):
    job = services.backup_start(machine=machine)
    job = finish(job, warnings=[{"path": "/srv/data/locked.db", "reason": "permission denied"}])
    assert job.get_status_display() == "Completed with warnings"
    alert = Alert.objects.get(machine=machine)
    assert (alert.severity, alert.kind) == ("warning", "backup_warnings")


def test_a_failed_backup_raises_a_critical_alert_that_the_next_success_resolves(
    machine, policy, alice, django_capture_on_commit_callbacks
):
    job = services.backup_start(machine=machine, user=alice)
    with django_capture_on_commit_callbacks(execute=True):
        finish(job, status="failed", error="The vault's storage could not be used: 403")
    alert = Alert.objects.get(machine=machine, resolved_at__isnull=True)
    assert alert.severity == "critical" and "403" in alert.message
    assert len(mail.outbox) == 1 and "Critical" in mail.outbox[0].subject
    assert alice.notifications.get(key=f"job:{job.pk}").level == "error"
    finish(services.backup_start(machine=machine), snapshot_id="cd" * 16)
    alert.refresh_from_db()
    assert alert.resolved_at is not None


def test_a_second_failure_counts_on_the_same_alert(machine, policy):
    finish(services.backup_start(machine=machine), status="failed", error="one")
    finish(services.backup_start(machine=machine), status="failed", error="two")
    alert = Alert.objects.get(machine=machine)
    assert alert.occurrences == 2 and alert.message.endswith("two")


def test_adhoc_after_a_failed_long_term_scheduled_backup_takes_its_place(machine, policy):
    saturday = timezone.datetime(2024, 3, 30, 0, 0, tzinfo=timezone.get_fixed_timezone(60))
    run = ScheduledRun.objects.create(
        policy=policy, scheduled_for=saturday, long_term_tags=["weekly", "monthly", "yearly"]
    )
    failed = Job.objects.create(
        vault=machine.vault,
        machine=machine,
        operation="backup",
        status="failed",
        trigger="scheduled",
        scheduled_for=saturday,
    )
    run.job = failed
    run.save()
    tagging, inherited = services.adhoc_retention(
        machine=machine, now=saturday + timedelta(hours=9)
    )
    assert inherited == run and "yearly" in tagging.tags
    job = services.backup_start(machine=machine)
    Job.objects.filter(pk=job.pk).update(created_at=saturday + timedelta(hours=9))
    job.refresh_from_db()
    finish(job)
    point = RecoveryPoint.objects.get(job=job)
    assert point.inherited_from == saturday
    assert {"weekly", "monthly", "yearly"} <= set(point.retention_tags)
    # Only the first ad hoc backup takes the place.
    _, inherited = services.adhoc_retention(machine=machine, now=saturday + timedelta(hours=10))
    assert inherited is None


def test_cancel_before_start_ends_the_job_at_once(machine, policy, alice):
    job = services.backup_start(machine=machine)
    job = services.job_cancel(job=job, user=alice)
    assert job.status == Job.Status.CANCELLED


def test_cancel_of_a_running_job_asks_the_agent(machine, policy, alice, sent):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    job = services.job_cancel(job=job, user=alice)
    assert job.status == Job.Status.RUNNING and job.cancel_requested_at
    assert sent[-1][1] == "haven.agent.cancel"
    assert services.job_record_progress(job=job, event={"phase": "backing_up"}) is True
    job = services.job_finish(job=job, status="cancelled", error="Cancelled on request")
    assert job.status == Job.Status.CANCELLED and not RecoveryPoint.objects.exists()


def test_a_job_not_picked_up_waits_then_fails_with_the_reason(machine, policy, settings):
    settings.HAVEN_JOB_AGENT_WAIT_MINUTES = 30
    job = services.backup_start(machine=machine)
    now = timezone.now()
    services.jobs_sweep(now=now + timedelta(minutes=2))
    job.refresh_from_db()
    assert job.get_status_display() == "Waiting for agent"
    services.jobs_sweep(now=now + timedelta(minutes=31))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "did not pick up this job within 30 minutes" in job.error
    assert Alert.objects.get(machine=machine).kind == "backup_failed"


def test_a_running_job_whose_agent_went_quiet_fails(machine, policy, settings):
    settings.HAVEN_JOB_STALL_SECONDS = 60
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job, now=timezone.now())
    services.jobs_sweep(now=timezone.now() + timedelta(seconds=61))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "stopped reporting" in job.error


def test_an_agent_back_after_the_stall_sweep_does_not_rewrite_the_reason(machine, policy, settings):
    settings.HAVEN_JOB_STALL_SECONDS = 60
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job, now=timezone.now())
    services.jobs_sweep(now=timezone.now() + timedelta(seconds=61))
    # The agent reports again, is told to stop, and confirms the stop.
    assert services.job_record_progress(job=Job.objects.get(pk=job.pk), event={}) is True
    job = services.job_finish(job=job, status="cancelled", error="Cancelled on request")
    assert job.status == Job.Status.FAILED and "stopped reporting" in job.error


def test_a_late_success_after_the_stall_sweep_keeps_its_recovery_point(machine, policy, settings):
    settings.HAVEN_JOB_STALL_SECONDS = 60
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job, now=timezone.now())
    services.jobs_sweep(now=timezone.now() + timedelta(seconds=61))
    job = finish(job)
    assert job.status == Job.Status.COMPLETED and RecoveryPoint.objects.get(job=job)


def test_a_silent_restore_fails_with_a_restore_reason(machine, policy, settings, alice):
    settings.HAVEN_JOB_STALL_SECONDS = 60
    job = Job.objects.create(
        vault=machine.vault,
        machine=machine,
        operation=Job.Operation.RESTORE,
        status=Job.Status.QUEUED,
        created_by=alice,
        details={"kind": "restore", "source_name": "db-01"},
    )
    services.job_mark_started(job=job, now=timezone.now())
    services.jobs_sweep(now=timezone.now() + timedelta(seconds=61))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "the restore was abandoned" in job.error and "start the recovery again" in job.error
    assert "recovery point" not in job.error and "backup" not in job.error
    note = alice.notifications.get(key=f"job:{job.pk}")
    assert note.title == "Restore of db-01 onto web-01: Failed"


def test_a_cancelled_job_whose_agent_went_quiet_ends_cancelled_and_says_so(
    machine, policy, settings, alice
):
    settings.HAVEN_JOB_STALL_SECONDS = 60
    job = services.backup_start(machine=machine, user=alice)
    services.job_mark_started(job=job, now=timezone.now())
    services.job_cancel(job=job, user=alice)
    services.jobs_sweep(now=timezone.now() + timedelta(seconds=61))
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert alice.notifications.get(key=f"job:{job.pk}").title.endswith(": Cancelled")


def test_no_recent_backup_raises_a_warning(machine, policy, settings):
    settings.HAVEN_ALERT_NO_BACKUP_DAYS = 2
    assert services.alerts_check_stale(now=timezone.now() + timedelta(days=3)) == 1
    alert = Alert.objects.get(machine=machine)
    assert alert.kind == "no_recent_backup" and alert.severity == "warning"


def test_the_stale_check_takes_a_few_queries_however_many_policies(
    vault,
    alice,
    pushes,
    settings,
    django_assert_max_num_queries,
    django_capture_on_commit_callbacks,
):
    from tests.jobs.conftest import spec
    from tests.support import builders

    settings.HAVEN_ALERT_NO_BACKUP_DAYS = 2
    later = timezone.now() + timedelta(days=3)
    other_vault = builders.make_vault(resource_group=vault.resource_group, name="vault-two")
    stale = [make_machine(v, f"stale-{n}") for n in range(3) for v in (vault, other_vault)]
    backed_up = make_machine(vault, "backed-up")
    too_new = make_machine(vault, "too-new")
    gone = make_machine(vault, "gone")
    for machine in [*stale, backed_up, too_new, gone]:
        services.policy_save(machine=machine, spec=spec(), user=alice)
    Job.objects.create(
        vault=vault,
        machine=backed_up,
        operation=Job.Operation.BACKUP,
        status=Job.Status.WARNING,
        ended_at=later - timedelta(days=1),
    )
    # Registered and given its policy hours before the check: too new to judge.
    type(too_new).objects.filter(pk=too_new.pk).update(registered_at=later - timedelta(hours=6))
    type(too_new.backup_policy).objects.filter(machine=too_new).update(
        scheduled_through=later - timedelta(hours=6)
    )
    type(gone).objects.filter(pk=gone.pk).update(unregistered_at=timezone.now())

    # (The mails go after commit, outside the count.)
    with django_capture_on_commit_callbacks(execute=True), django_assert_max_num_queries(8):
        assert services.alerts_check_stale(now=later) == 6
    alerts = Alert.objects.filter(kind="no_recent_backup")
    assert sorted(a.machine.name for a in alerts) == sorted(m.name for m in stale)
    assert {(a.severity, a.occurrences) for a in alerts} == {("warning", 1)}
    assert (
        alerts.get(machine=stale[0]).message == "stale-0 has had no successful backup for 2 days."
    )
    assert len(mail.outbox) == 6  # one mail per new alert
    # Each vault's alert summary is pushed with its final counts.
    summaries = {group: html for group, html in pushes if "alert-summary" in html}
    assert set(summaries) == {f"vault.{vault.pk}", f"vault.{other_vault.pk}"}
    assert "3 Warning" in summaries[f"vault.{vault.pk}"]

    # The next check counts the same alerts again: no new ones, no new mail.
    with django_assert_max_num_queries(8):
        assert services.alerts_check_stale(now=later + timedelta(hours=1)) == 6
    assert {a.occurrences for a in alerts.all()} == {2} and alerts.count() == 6
    assert len(mail.outbox) == 6


def test_the_stale_check_survives_an_alert_raised_meanwhile(machine, policy, settings, monkeypatch):
    settings.HAVEN_ALERT_NO_BACKUP_DAYS = 2
    create = Alert.objects.bulk_create

    def another_check_first(alerts, **kwargs):
        services.alert_raise(
            vault=machine.vault,
            machine=machine,
            kind="no_recent_backup",
            severity="warning",
            message="raised meanwhile",
        )
        return create(alerts, **kwargs)

    monkeypatch.setattr(Alert.objects, "bulk_create", another_check_first)
    assert services.alerts_check_stale(now=timezone.now() + timedelta(days=3)) == 1
    alert = Alert.objects.get(machine=machine, resolved_at__isnull=True)
    assert alert.message == "web-01 has had no successful backup for 2 days."


def test_hourly_digest_mails_each_recipient_once(machine, policy, settings):
    settings.HAVEN_ALERT_EMAIL = "digest"
    finish(services.backup_start(machine=machine), status="failed", error="x")
    assert mail.outbox == []
    assert services.alerts_send_digest() == 1
    assert len(mail.outbox) == 1 and "1 backup alert" in mail.outbox[0].subject
    assert services.alerts_send_digest() == 0


def test_policy_save_bumps_the_version_and_pushes_it(machine, alice, sent):
    from tests.jobs.conftest import spec

    policy = services.policy_save(machine=machine, spec=spec(), user=alice)
    assert policy.version == 1 and policy.drifted
    assert sent[-1][1] == "haven.agent.policy" and sent[-1][2]["spec_hash"] == policy.spec_hash
    same = services.policy_save(machine=machine, spec=spec(), user=alice)
    assert same.version == 1
    changed = services.policy_save(machine=machine, spec=spec(items=["/home"]), user=alice)
    assert changed.version == 2
    services.policy_applied(policy=changed, version=2, spec_hash=changed.spec_hash)
    changed.refresh_from_db()
    assert not changed.drifted and services.policy_drift(changed) is None


def test_drift_says_why(machine, policy):
    services.policy_applied(policy=policy, version=1, spec_hash="", error="disk full")
    policy.refresh_from_db()
    assert "could not apply version 1: disk full" in services.policy_drift(policy)
