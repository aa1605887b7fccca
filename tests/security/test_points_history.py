"""History survives: deleting a machine or a vault never takes its jobs, recovery points,
alerts or download audit records along by cascade (the jobs app's foreign keys PROTECT
them). A rolled-back registration of a machine with history is refused: the agent
unregisters it instead, and its history stays."""

from __future__ import annotations

import pytest
from django.db.models import ProtectedError
from django.utils import timezone

from agents import services as agent_services
from agents.models import Machine
from agents.services import MachineError
from jobs import services
from jobs.models import Alert, Job, RecoveryPoint
from tests.jobs import conftest as jobs_conftest
from tests.jobs.conftest import make_machine, spec, stored_point
from vaults import services as vault_services

pytestmark = pytest.mark.django_db
# The jobs app's fixtures: agent tasks and portal tasks recorded, pushes captured.
_jobs_env, pushes, sent = jobs_conftest._jobs_env, jobs_conftest.pushes, jobs_conftest.sent


@pytest.fixture
def history(vault, alice):
    """web-01 with a recovery point, a failed backup (and its alert) and a download."""
    machine = make_machine(vault)
    services.policy_save(machine=machine, spec=spec(), user=alice)
    stored_point(machine, "a0" * 16, ["a1" * 16])
    services.job_finish(
        job=services.backup_start(machine=machine),
        status="completed",
        snapshot_id="a0" * 16,
        pack_ids=["a1" * 16],
    )
    services.job_finish(job=services.backup_start(machine=machine), status="failed", error="x")
    Job.objects.create(
        vault=vault,
        machine=machine,
        operation=Job.Operation.RESTORE,
        status=Job.Status.COMPLETED,
        created_by=alice,
        details={"kind": "download", "recovery_point": "a0" * 16},
    )
    return machine


def counts(machine) -> tuple[int, int, int]:
    return (
        Job.objects.filter(machine=machine).count(),
        RecoveryPoint.objects.filter(machine=machine).count(),
        Alert.objects.filter(machine=machine).count(),
    )


def test_deleting_a_machine_never_erases_its_jobs_points_and_download_records(history):
    before = counts(history)
    assert before == (3, 1, 1)
    with pytest.raises(ProtectedError):
        Machine.objects.filter(pk=history.pk).delete()
    assert counts(history) == before


def test_a_rolled_back_registration_keeps_the_history_of_the_machine(history):
    """The rollback an agent may ask for deletes only a machine that never came online and
    holds nothing; one with history is refused with 409 and nothing changes."""
    Machine.objects.filter(pk=history.pk).update(last_seen_at=None)
    history.refresh_from_db()
    with pytest.raises(MachineError) as refused:
        agent_services.machine_registration_rollback(machine=history)
    assert refused.value.code == "rollback_refused" and refused.value.status == 409
    history.refresh_from_db()
    assert history.unregistered_at is None
    assert counts(history) == (3, 1, 1)


def test_deleting_the_vault_removes_its_history_on_purpose(history, alice, vault):
    """Deleting an emptied vault is the one way the history goes: explicitly, with it."""
    RecoveryPoint.objects.update(removed_at=timezone.now())
    Machine.objects.filter(pk=history.pk).update(unregistered_at=timezone.now())
    vault_services.vault_delete(vault=vault, user=alice)
    assert not Job.objects.exists() and not RecoveryPoint.objects.exists()
    assert not Alert.objects.exists() and not Machine.objects.exists()
