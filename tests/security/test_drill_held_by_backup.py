"""A compromised machine keeps a backup "in progress" for ever, so that its scheduled restore
drills, which wait for a backup under way (``selectors.backup_under_way``), never run and
its data is never proven restorable. The hold ends no later than the missed-drill alert:
past the drill's period and grace the portal says so, whatever the machine reports."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import services
from jobs.models import Alert, BackupPolicy, Job, RecoveryPoint
from tests.jobs.conftest import spec

pytestmark = pytest.mark.django_db


def test_a_backup_held_in_progress_holds_the_drill_but_not_the_missed_drill_alert(
    machine, alice, no_broker
):
    now = timezone.now()
    services.policy_save(machine=machine, spec=spec(), user=alice)
    BackupPolicy.objects.filter(machine=machine).update(drill_since=now - timedelta(days=40))
    RecoveryPoint.objects.create(
        machine=machine, vault=machine.vault, snapshot_id="a" * 64, manifest_blob="snapshots/a",
        created_at=now - timedelta(days=40), tagged_for=now - timedelta(days=40),
        kind=RecoveryPoint.Kind.ADHOC, logical_bytes=1, file_count=1,
    )  # fmt: skip
    held = Job.objects.create(
        vault=machine.vault, machine=machine, operation=Job.Operation.BACKUP,
        status=Job.Status.RUNNING, started_at=now - timedelta(days=39),
    )  # fmt: skip
    Job.objects.filter(pk=held.pk).update(created_at=now - timedelta(days=39))

    assert services.drills_schedule(now=now) == []  # held, as a real backup would hold it
    assert services.drills_check_missed(now=now) == 1
    assert Alert.objects.filter(machine=machine, kind=Alert.Kind.DRILL_MISSED).exists()
    Job.objects.filter(pk=held.pk).update(status=Job.Status.FAILED)  # the sweep's, or its end
    assert len(services.drills_schedule(now=now)) == 1  # the hold was all that stopped it
