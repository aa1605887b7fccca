"""Registration rollback cannot delete data (issue 12, item 4).

The attacker holds a machine's fresh token (a compromised machine). Before the fix,
``POST /api/agent/unregister/ {"rollback": true}`` deleted the machine row, and with it, by
cascade, its jobs (download audit records included) and recovery points, and then its whole
container. Now rollback removes only a registration that has no job, no recovery point and
no blob; anything else is refused with 409 and left as it was.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.models import Machine
from jobs.models import Job, RecoveryPoint
from tests.agents.conftest import agent_env, register_directly  # noqa: F401 (fixture)
from vaults.storage import primary_account

pytestmark = pytest.mark.django_db


@pytest.fixture
def registered(agent_env, vault, alice):  # noqa: F811 (the imported fixture)
    machine, registration = register_directly(vault, alice, "web-01")
    return machine, registration.token


def rollback(client, token):
    return client.post(
        reverse("agent_api:unregister"),
        '{"rollback": true, "reason": "broker unreachable"}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def put_blob(machine: Machine, name: str = "data/0123", data: bytes = b"backup bytes") -> None:
    store = primary_account().store(machine.container)
    try:
        store.put(name, data)
    finally:
        store.close()


def blob_names(machine: Machine) -> list[str]:
    store = primary_account().store(machine.container)
    try:
        return sorted(info.name for info in store.list())
    finally:
        store.close()


def test_a_fresh_token_cannot_roll_back_a_machine_with_jobs_points_and_data(client, registered):
    machine, token = registered
    download = Job.objects.create(
        vault=machine.vault, machine=machine, operation=Job.Operation.RESTORE,
        status=Job.Status.COMPLETED, details={"kind": "download", "items": 1},
    )  # fmt: skip
    at = timezone.now() - timedelta(hours=1)
    RecoveryPoint.objects.create(
        machine=machine, vault=machine.vault, snapshot_id="c" * 32, manifest_blob="snapshots/c",
        created_at=at, tagged_for=at, kind=RecoveryPoint.Kind.ADHOC,
    )  # fmt: skip
    put_blob(machine)

    response = rollback(client, token)

    assert response.status_code == 409
    assert response.json()["error"] == "rollback_refused"
    assert "Unregister it instead" in response.json()["message"]
    machine.refresh_from_db()
    assert machine.unregistered_at is None
    assert Job.objects.filter(pk=download.pk).exists()
    assert RecoveryPoint.objects.filter(machine=machine).count() == 1
    assert blob_names(machine) == ["data/0123"]


def test_a_fresh_token_cannot_delete_a_container_holding_data(client, registered):
    machine, token = registered
    put_blob(machine, "keys/abc", b"wrapped key")
    assert rollback(client, token).status_code == 409
    assert Machine.objects.filter(pk=machine.pk, unregistered_at__isnull=True).exists()
    assert blob_names(machine) == ["keys/abc"]


def test_a_machine_with_only_a_job_is_not_rolled_back(client, registered):
    machine, token = registered
    Job.objects.create(
        vault=machine.vault, machine=machine, operation=Job.Operation.BACKUP,
        status=Job.Status.QUEUED,
    )  # fmt: skip
    assert rollback(client, token).status_code == 409
    assert Job.objects.filter(machine=machine).count() == 1


def test_an_empty_registration_rolls_back_without_a_trace(client, registered):
    machine, token = registered
    assert rollback(client, token).status_code == 200
    assert not Machine.objects.filter(pk=machine.pk).exists()
    assert not primary_account().container_exists(machine.container)


def test_rollback_keeps_the_record_of_whose_backups_the_machine_read(
    client, registered, vault, alice
):
    from agents.models import SourceGrantAuthorisation
    from tests.recovery.conftest import make_machine

    machine, token = registered
    web02 = make_machine(vault, "web-02")
    SourceGrantAuthorisation.objects.create(
        source=web02, target=machine, authorised_by=alice, via="portal",
        expires_at=timezone.now() + timedelta(minutes=5),
    )  # fmt: skip
    assert rollback(client, token).status_code == 409
    assert SourceGrantAuthorisation.objects.filter(target=machine).count() == 1
