"""Stop protection (retain or delete), resume, soft delete, undelete and the purge job, as
services, with the roles that may do each (pages in test_protection_views below)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from agents.runtime import protocol
from jobs import services
from jobs.models import BackupPolicy, Job, RecoveryPoint
from portal.models import Role
from tests.jobs.conftest import make_machine, spec, stored_point
from vaults import security_pin, selectors, storage
from vaults.models import ActivityEntry, Vault

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)


def point(machine, snapshot: str, at: datetime, packs=("p1",)) -> RecoveryPoint:
    stored_point(machine, snapshot, pack_ids=packs)
    return RecoveryPoint.objects.create(
        machine=machine,
        vault=machine.vault,
        snapshot_id=snapshot,
        manifest_blob=f"snapshots/{snapshot}",
        created_at=at,
        tagged_for=at,
        kind=RecoveryPoint.Kind.ADHOC,
        pack_ids=list(packs),
    )


def blobs(machine) -> list[str]:
    with storage.primary_account().store(machine.container) as store:
        return sorted(b.name for b in store.list(""))


def delete(machine, user, **changes):
    kwargs = {
        "confirm_name": machine.name,
        "reason": "decommissioned",
        "pin": security_pin.generate(user=user, vault=machine.vault),
    }
    kwargs.update(changes)
    return services.protection_delete(machine=machine, user=user, **kwargs)


# --- stop and retain, resume ---------------------------------------------------------------
def test_stop_with_retain_sends_a_stopped_policy_and_refuses_every_backup(
    machine, policy, alice, sent
):
    services.protection_stop(machine=machine, user=alice, retention="forever")
    policy.refresh_from_db()
    assert policy.protection == BackupPolicy.Protection.STOPPED and policy.version == 2
    _, task, kwargs = sent[-1]
    assert task == protocol.POLICY_TASK and kwargs["version"] == 2
    assert kwargs["policy"][protocol.POLICY_PROTECTION] == protocol.PROTECTION_STOPPED
    with pytest.raises(services.ProtectionStopped, match="Resume backup"):
        services.backup_start(machine=machine)
    BackupPolicy.objects.filter(pk=policy.pk).update(scheduled_through=timezone.now() - 30 * DAY)
    type(machine).objects.filter(pk=machine.pk).update(registered_at=timezone.now() - 30 * DAY)
    assert services.schedule_tick() == []
    assert not Job.objects.filter(operation=Job.Operation.BACKUP).exists()
    assert services.alerts_check_stale() == 0  # stopped on purpose: no "no recent backup"
    with pytest.raises(services.ProtectionRefused, match="not on"):
        services.protection_stop(machine=machine, user=alice, retention="forever")


def test_stop_cancels_a_queued_backup(machine, policy, alice):
    job = services.backup_start(machine=machine)
    services.protection_stop(machine=machine, user=alice, retention="policy")
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED


def test_resume_protects_again_without_catching_up_missed_times(machine, policy, alice, sent):
    services.protection_stop(machine=machine, user=alice, retention="forever")
    services.protection_resume(machine=machine, user=alice)
    policy.refresh_from_db()
    assert policy.is_protected and policy.version == 3
    assert protocol.POLICY_PROTECTION not in sent[-1][2]["policy"]
    assert policy.spec_hash == sent[-1][2]["spec_hash"]
    assert services.schedule_tick() == []  # nothing missed while stopped runs now
    assert services.backup_start(machine=machine).operation == Job.Operation.BACKUP


def test_retention_keeps_every_point_when_told_and_applies_the_policy_otherwise(
    machine, policy, alice
):
    now = timezone.now()
    old = point(machine, "s-old", now - 60 * DAY, packs=("p1",))
    point(machine, "s-new", now - DAY, packs=("p2",))
    RecoveryPoint.objects.update(expires_at=now - DAY)
    services.protection_stop(machine=machine, user=alice, retention="forever")
    assert services.retention_apply(machine=machine, now=now) == []
    BackupPolicy.objects.filter(pk=policy.pk).update(stop_retention="policy")
    removed = services.retention_apply(machine=machine, now=now)
    assert [p.pk for p in removed] == [old.pk]  # the latest is kept whatever its age


def test_a_stopped_policy_cannot_be_edited_until_resumed(machine, policy, alice):
    services.protection_stop(machine=machine, user=alice, retention="forever")
    with pytest.raises(ValidationError) as caught:
        services.policy_save(machine=machine, spec=spec(times=["03:00"]), user=alice)
    assert "until backup is resumed" in str(caught.value)


# --- stop and delete, soft delete, undelete, purge ------------------------------------------
def test_delete_needs_the_name_a_reason_and_a_pin(machine, policy, alice):
    with pytest.raises(services.ProtectionRefused, match="Type the machine's name, web-01"):
        delete(machine, alice, confirm_name="web-1")
    with pytest.raises(services.ProtectionRefused, match="reason"):
        delete(machine, alice, reason="  ")
    with pytest.raises(security_pin.PinWrong):
        delete(machine, alice, pin="00000000")
    with pytest.raises(security_pin.PinMissing):
        delete(machine, alice, pin="")
    policy.refresh_from_db()
    assert policy.is_protected


def test_delete_soft_deletes_for_the_vault_period_and_emails_the_recipients(
    machine, policy, alice, member, django_capture_on_commit_callbacks
):
    bob = member(Role.BACKUP_OPERATOR)
    point(machine, "s1", timezone.now() - DAY)
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        delete(machine, alice)
    policy.refresh_from_db()
    assert policy.protection == BackupPolicy.Protection.SOFT_DELETED
    assert policy.delete_reason == "decommissioned" and policy.deleted_by == alice
    assert before + 14 * DAY <= policy.purge_after <= timezone.now() + 14 * DAY
    (email,) = mail.outbox
    assert sorted(email.to) == sorted([alice.email, bob.email])
    assert "backup data of web-01 deleted" in email.subject
    assert "Reason: decommissioned" in email.body and "Undelete it before then" in email.body
    summary = services.restore_refusal(machine)
    assert "soft deleted" in summary and "until it is undeleted" in summary
    with pytest.raises(services.ProtectionStopped):
        services.backup_start(machine=machine)


def test_a_soft_deleted_items_points_cannot_be_read_until_undeleted(machine, policy, alice):
    from jobs.recovery import services as recovery

    point(machine, "s1", timezone.now() - DAY)
    delete(machine, alice)
    with pytest.raises(recovery.SourceNotAuthorised, match="until it is undeleted") as caught:
        recovery.source_grant(machine=machine, source_ref=str(machine.pk))
    assert (caught.value.code, caught.value.status) == ("soft_deleted", 409)
    with pytest.raises(recovery.RecoveryRefused, match="soft deleted"):
        recovery.question_ask(user=alice, source=machine, target=machine, kind="points")
    services.protection_undelete(machine=machine, user=alice)
    found, grant = recovery.source_grant(machine=machine, source_ref=str(machine.pk))
    assert found.machine == machine and grant


def test_the_purge_removes_exactly_that_machines_blobs_after_the_period(
    machine, policy, alice, vault, client
):
    other = make_machine(vault, "db-01")
    services.policy_save(machine=other, spec=spec(), user=alice)
    point(machine, "s1", timezone.now() - DAY, packs=("aa01", "bb02"))
    point(other, "t1", timezone.now() - DAY, packs=("cc03",))
    other_blobs = blobs(other)
    delete(machine, alice)
    policy.refresh_from_db()
    assert services.protection_purge_due(now=policy.purge_after - timedelta(minutes=1)) == 0
    assert len(blobs(machine)) == 3  # the manifest and its two packs, untouched
    assert services.protection_purge_due(now=policy.purge_after) == 1
    assert blobs(machine) == [] and blobs(other) == other_blobs
    job = Job.objects.get(operation=Job.Operation.PURGE)
    assert (job.machine, job.status, job.details["blobs_deleted"]) == (machine, "completed", 3)
    policy.refresh_from_db()
    assert policy.protection == BackupPolicy.Protection.DELETED
    assert not RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True).exists()
    assert RecoveryPoint.objects.filter(machine=other, removed_at__isnull=True).count() == 1
    assert services.protection_purge_due(now=policy.purge_after + DAY) == 0  # once
    client.force_login(alice)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Delete backup data" in page and "Completed" in page
    page = client.get(f"/machines/{machine.pk}/").content.decode()
    assert "Backup data deleted" in page and "register it again with --replace" in page


def test_undelete_returns_the_item_to_stopped_with_its_data(machine, policy, alice):
    point(machine, "s1", timezone.now() - DAY)
    delete(machine, alice)
    services.protection_undelete(machine=machine, user=alice)
    policy.refresh_from_db()
    assert policy.protection == BackupPolicy.Protection.STOPPED
    assert policy.stop_retention == "forever" and policy.purge_after is None
    assert services.restore_refusal(machine) is None
    assert services.protection_purge_due(now=timezone.now() + 30 * DAY) == 0
    assert blobs(machine)  # still there
    services.protection_resume(machine=machine, user=alice)


def test_an_unregistered_machines_data_is_listed_and_can_be_deleted(machine, policy, alice, sent):
    from jobs import selectors as job_selectors

    point(machine, "s1", timezone.now() - DAY)
    type(machine).objects.filter(pk=machine.pk).update(unregistered_at=timezone.now())
    machine.refresh_from_db()
    (item,) = job_selectors.backup_items(machine.vault)
    summary = job_selectors.protection_summary(item, policy)
    assert (summary.state, summary.label) == ("unregistered", "Unregistered")
    with pytest.raises(services.ProtectionRefused, match="unregistered"):
        services.protection_stop(machine=machine, user=alice, retention="forever")
    sent.clear()
    delete(machine, alice)
    assert sent == []  # nothing is sent to a machine that is gone
    policy.refresh_from_db()
    assert policy.protection == BackupPolicy.Protection.SOFT_DELETED


def test_undelete_is_refused_once_the_period_has_ended(machine, policy, alice):
    delete(machine, alice)
    policy.refresh_from_db()
    with pytest.raises(services.ProtectionRefused, match="can no longer be undeleted"):
        services.protection_undelete(machine=machine, user=alice, now=policy.purge_after)


def test_with_soft_delete_off_the_purge_is_queued_at_once(machine, policy, alice, _jobs_env):
    Vault.objects.filter(pk=machine.vault_id).update(soft_delete_enabled=False)
    machine.vault.refresh_from_db()
    delete(machine, alice)
    assert ("protection_purge_machine", (str(machine.pk),)) in _jobs_env
    assert services.protection_purge(machine=machine) is not None


def test_without_security_features_delete_needs_no_pin_and_sends_no_email(machine, policy, alice):
    Vault.objects.filter(pk=machine.vault_id).update(security_features=False)
    machine.vault.refresh_from_db()
    services.protection_delete(
        machine=machine, user=alice, confirm_name="web-01", reason="x", pin=""
    )
    assert mail.outbox == []


# --- the vault's delete blockers --------------------------------------------------------------
def test_the_vault_delete_page_lists_each_item_with_data_and_a_link(machine, policy, alice):
    point(machine, "s1", timezone.now() - DAY)
    (registered, item) = selectors.vault_delete_blockers(machine.vault)
    assert "registered machine" in registered.what
    assert item.what == "web-01: protected (1 recovery point)"
    assert item.link_url == f"/jobs/machines/{machine.pk}/protection/stop/?choice=delete"
    delete(machine, alice)
    (_, item) = selectors.vault_delete_blockers(machine.vault)
    assert item.what == "web-01: soft deleted (1 recovery point)"
    assert "removed for good on" in item.action and "Undelete it" in item.action


# --- retention minimums and lowering a policy's retention -----------------------------------
def test_security_features_hold_the_minimum_retention(machine, alice):
    short = spec()
    short["retention"]["daily"] = {"days": 6}
    short["retention"]["monthly"]["months"] = 2
    with pytest.raises(ValidationError) as caught:
        services.policy_save(machine=machine, spec=short, user=alice)
    problems = caught.value.message_dict
    assert "at least 7 days" in problems["daily_days"][0]
    assert "at least 3 months" in problems["monthly_months"][0]
    Vault.objects.filter(pk=machine.vault_id).update(security_features=False)
    machine.vault.refresh_from_db()
    assert services.policy_save(machine=machine, spec=short, user=alice).retention["daily"] == {
        "days": 6
    }


def test_lowering_retention_needs_a_pin_and_emails(
    machine, policy, alice, django_capture_on_commit_callbacks
):
    lower = spec()
    lower["retention"]["weekly"]["weeks"] = 4
    lower["retention"]["yearly"] = None
    longer = spec()
    longer["retention"]["daily"] = {"days": 30}
    services.policy_save(machine=machine, spec=longer, user=alice)  # raising needs nothing
    assert mail.outbox == []
    with pytest.raises(ValidationError) as caught:
        services.policy_save(machine=machine, spec=lower, user=alice)
    (message,) = caught.value.message_dict["security_pin"]
    assert "daily 30 → 7 days" in message and "yearly retention turned off" in message
    pin = security_pin.generate(user=alice, vault=machine.vault)
    with django_capture_on_commit_callbacks(execute=True):
        saved = services.policy_save(machine=machine, spec=lower, user=alice, pin=pin)
    assert saved.retention["yearly"] is None
    assert "retention of web-01's policy lowered" in mail.outbox[0].subject


# --- pages: who may do what ------------------------------------------------------------------
def test_roles_on_the_stop_resume_and_undelete_pages(
    client, alice, member, charlie, machine, policy
):
    """Outsider 404; Reader sees, changes nothing (403); Backup Operator stops with retain,
    resumes and undeletes, but may not delete (403); Contributor deletes; bad input 400."""
    stop = f"/jobs/machines/{machine.pk}/protection/stop/"
    resume = f"/jobs/machines/{machine.pk}/protection/resume/"
    undelete = f"/jobs/machines/{machine.pk}/protection/undelete/"
    client.force_login(charlie)
    assert client.get(stop).status_code == 404 and client.post(resume).status_code == 404
    bob = member(Role.READER)
    client.force_login(bob)
    assert client.get(stop).status_code == 200
    assert client.post(stop, {"choice": "retain", "retention": "forever"}).status_code == 403
    assert client.post(resume).status_code == 403 and client.post(undelete).status_code == 403
    member(Role.BACKUP_OPERATOR)
    assert client.post(stop, {"choice": "retain", "retention": "bogus"}).status_code == 400
    assert client.post(stop, {"choice": "retain", "retention": "forever"}).status_code == 302
    pin = security_pin.generate(user=bob, vault=machine.vault)
    form = {"choice": "delete", "confirm_name": "web-01", "reason": "gone", "security_pin": pin}
    assert client.post(stop, form).status_code == 403
    assert client.post(resume).status_code == 302
    policy.refresh_from_db()
    assert policy.is_protected
    member(Role.CONTRIBUTOR)
    refused = client.post(stop, {**form, "confirm_name": "web-02"})
    assert refused.status_code == 400 and "Type the machine" in refused.content.decode()
    assert client.post(stop, form).status_code == 302
    page = client.get(f"/jobs/vaults/{machine.vault_id}/backup-items/").content.decode()
    assert "Soft deleted" in page and "14 days left" in page
    member(Role.BACKUP_OPERATOR)
    assert client.post(undelete).status_code == 302
    policy.refresh_from_db()
    assert policy.protection == BackupPolicy.Protection.STOPPED
    entries = set(ActivityEntry.objects.values_list("operation", "outcome", "username"))
    for operation in ("stop_retain", "stop_delete", "resume", "undelete"):
        assert (f"protection.{operation}", "succeeded", "bob") in entries
    for operation in ("stop_retain", "stop_delete", "resume", "undelete"):
        assert (f"protection.{operation}", "refused", "bob") in entries  # as Reader
    assert ("pin.use", "succeeded", "bob") in entries


def test_the_policy_form_asks_for_a_pin_to_lower_retention(client, alice, machine, policy):
    client.force_login(alice)
    url = f"/jobs/machines/{machine.pk}/policy/"
    assert 'name="security_pin"' in client.get(url).content.decode()
    form = {
        "items": "/srv/data",
        "frequency": "daily",
        "times": ["00:00"],
        "daily_enabled": "on",
        "daily_days": "7",
        "initial_backup": "online",
    }
    response = client.post(url, form)  # weekly, monthly and yearly turned off
    page = response.content.decode()
    assert response.status_code == 400 and "This change lowers retention" in page
    assert "weekly retention turned off" in page
    form["security_pin"] = security_pin.generate(user=alice, vault=machine.vault)
    assert client.post(url, form).status_code == 302
    policy.refresh_from_db()
    assert policy.retention["weekly"] is None and policy.version == 2
