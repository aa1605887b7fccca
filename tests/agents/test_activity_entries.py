"""Machine operations in the activity log: register, replace, unregister (by a person and by
the machine itself), rename — one entry each, refusals included."""

from __future__ import annotations

import pytest

from agents import services
from portal.models import Role
from tests.agents.conftest import issue_credentials, register_directly
from tests.support.activity import one_entry
from vaults.activity import Operation, Outcome
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db


def test_register_then_replace_are_two_entries_by_the_machine(vault, alice):
    first, _ = register_directly(vault, alice, "web-01", hostname="web-01.lan")
    entry = one_entry(
        operation=Operation.MACHINE_REGISTER,
        username="machine web-01",
        user=None,
        resource_kind="machine",
        resource_id=str(first.pk),
        vault_id=vault.pk,
    )
    assert entry.detail["credentials_downloaded_by"] == "alice"
    assert entry.detail["hostname"] == "web-01.lan"
    second, _ = register_directly(vault, alice, "web-01", replace=True)
    replaced = ActivityEntry.objects.get(operation=Operation.MACHINE_REPLACE)
    assert replaced.resource_id == str(second.pk)
    assert replaced.detail["replaced"] == [{"id": str(first.pk), "name": "web-01"}]


def test_a_refused_registration_is_recorded_with_the_reason(vault, alice):
    register_directly(vault, alice, "web-01")
    with pytest.raises(services.MachineError):
        services.machine_register(content=issue_credentials(vault, alice), machine_name="WEB-01")
    refused = ActivityEntry.objects.get(outcome=Outcome.REFUSED)
    assert refused.operation == Operation.MACHINE_REGISTER
    assert "already has a machine named" in refused.reason
    assert ActivityEntry.objects.filter(operation=Operation.MACHINE_REGISTER).count() == 2


def test_rename_and_unregister_in_the_portal(client, vault, alice):
    machine, _ = register_directly(vault, alice, "web-01")
    client.force_login(alice)
    client.post(f"/machines/{machine.pk}/rename/", {"name": "web-02"})
    client.post(f"/machines/{machine.pk}/unregister/", {"confirm_name": "web-02"})
    rename = ActivityEntry.objects.get(operation=Operation.MACHINE_RENAME)
    assert (rename.username, rename.detail) == ("alice", {"from": "web-01", "to": "web-02"})
    gone = ActivityEntry.objects.get(operation=Operation.MACHINE_UNREGISTER)
    assert (gone.username, gone.resource_name) == ("alice", "web-02")
    assert ActivityEntry.objects.exclude(operation=Operation.CREDENTIALS_DOWNLOAD).count() == 3


def test_the_machine_unregistering_itself_is_recorded_as_the_machine(client, vault, alice):
    _machine, registration = register_directly(vault, alice, "web-01")
    response = client.post(
        "/api/agent/unregister/",
        data="{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {registration.token}",
        REMOTE_ADDR="203.0.113.20",
    )
    assert response.status_code == 200
    entry = ActivityEntry.objects.get(operation=Operation.MACHINE_UNREGISTER)
    assert (entry.username, entry.user, entry.address) == (
        "machine web-01",
        None,
        "203.0.113.20",
    )


def test_a_readers_rename_is_refused_and_recorded(client, vault, alice, member):
    machine, _ = register_directly(vault, alice, "web-01")
    client.force_login(member(Role.READER))
    assert client.post(f"/machines/{machine.pk}/rename/", {"name": "x"}).status_code == 403
    entry = ActivityEntry.objects.get(operation=Operation.MACHINE_RENAME)
    assert (entry.outcome, entry.username, entry.resource_name) == (
        Outcome.REFUSED,
        "bob",
        "web-01",
    )
