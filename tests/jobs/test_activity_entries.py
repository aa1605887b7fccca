"""Jobs operations in the activity log: a policy change with its diff, Back up now (not a
scheduled backup), and a refused attempt at each."""

from __future__ import annotations

import pytest
from django.urls import reverse

from jobs import services
from jobs.models import Job
from portal.models import Role
from tests.jobs.conftest import spec
from tests.support.activity import one_entry
from vaults.activity import Operation, Outcome
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db


def test_each_policy_version_is_one_entry_with_its_diff(machine, alice):
    services.policy_save(machine=machine, spec=spec(), user=alice)
    first = one_entry(operation=Operation.POLICY_CHANGE, username="alice")
    assert first.detail["version"] == 1
    assert first.detail["changes"]["retention.daily.days"] == {"from": None, "to": 7}
    retention = spec()["retention"]
    retention["daily"]["days"] = 30
    services.policy_save(machine=machine, spec=spec(retention=retention), user=alice)
    services.policy_save(machine=machine, spec=spec(retention=retention), user=alice)  # same
    latest = ActivityEntry.objects.filter(operation=Operation.POLICY_CHANGE).first()
    assert ActivityEntry.objects.filter(operation=Operation.POLICY_CHANGE).count() == 2
    assert latest.detail == {
        "version": 2,
        "changes": {"retention.daily.days": {"from": 7, "to": 30}},
    }
    assert (latest.resource_kind, latest.resource_name) == ("backup policy", "web-01")


def test_back_up_now_is_recorded_and_a_scheduled_backup_is_not(machine, policy, alice):
    job = services.backup_start(machine=machine, user=alice)
    entry = one_entry(operation=Operation.BACKUP_NOW, username="alice", resource_name="web-01")
    assert entry.detail["job"] == str(job.pk)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED)
    services.backup_start(machine=machine, trigger=Job.Trigger.SCHEDULED)
    assert ActivityEntry.objects.filter(operation=Operation.BACKUP_NOW).count() == 1


def test_a_readers_back_up_now_and_policy_change_are_refused_and_recorded(
    client, machine, policy, member
):
    client.force_login(member(Role.READER))
    assert client.post(reverse("jobs:backup_now", args=[machine.pk])).status_code == 403
    assert client.post(reverse("jobs:policy", args=[machine.pk]), {}).status_code == 403
    assert not Job.objects.exists()
    refused = ActivityEntry.objects.filter(outcome=Outcome.REFUSED, username="bob")
    assert sorted(e.operation for e in refused) == [Operation.BACKUP_NOW, Operation.POLICY_CHANGE]
