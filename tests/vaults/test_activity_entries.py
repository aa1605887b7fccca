"""The vault operations in the activity log: create, delete, storage redundancy, vault
credentials downloaded and revoked — each leaves exactly one entry, refusals included."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from portal.models import Role
from tests.support.activity import one_entry
from tests.vaults.conftest import make_machine
from vaults import selectors, services
from vaults.activity import Operation, Outcome
from vaults.credentials import credentials_issue
from vaults.models import ActivityEntry, Vault

pytestmark = pytest.mark.usefixtures("vault_env")


def test_creating_a_vault_is_recorded(settings, subscription, resource_group, alice):
    vault = services.vault_create(
        subscription=subscription,
        resource_group=resource_group,
        name="vault-two",
        location=settings.HAVEN_REGIONS[0],
        created_by=alice,
    )
    one_entry(
        operation=Operation.VAULT_CREATE,
        username="alice",
        vault_id=vault.pk,
        vault_name="vault-two",
        subscription_id=subscription.pk,
        outcome=Outcome.SUCCEEDED,
    )


def test_a_deleted_vault_keeps_its_entries(deployed_vault, alice):
    credentials_issue(vault=deployed_vault, issued_by=alice)
    services.vault_delete(vault=deployed_vault, user=alice)
    assert not Vault.objects.exists()
    entry = ActivityEntry.objects.get(operation=Operation.VAULT_DELETE)
    assert (entry.vault_id, entry.vault_name, entry.outcome) == (
        deployed_vault.pk,
        "vault-one",
        Outcome.SUCCEEDED,
    )
    assert ActivityEntry.objects.filter(vault_id=deployed_vault.pk).count() == 2


def test_a_blocked_delete_is_recorded_as_refused_with_what_blocks_it(deployed_vault, alice):
    make_machine(deployed_vault)
    with pytest.raises(services.VaultDeleteBlocked):
        services.vault_delete(vault=deployed_vault, user=alice)
    one_entry(
        operation=Operation.VAULT_DELETE,
        outcome=Outcome.REFUSED,
        reason="1 registered machine",
        vault_id=deployed_vault.pk,
    )


def test_a_reader_posting_delete_is_refused_and_recorded(client, deployed_vault, member):
    client.force_login(member(Role.READER))
    response = client.post(
        reverse("vaults:delete", args=[deployed_vault.pk]),
        {"confirm_name": "vault-one"},
        REMOTE_ADDR="198.51.100.4",
    )
    assert response.status_code == 403
    assert Vault.objects.filter(pk=deployed_vault.pk).exists()
    one_entry(
        operation=Operation.VAULT_DELETE,
        outcome=Outcome.REFUSED,
        username="bob",
        address="198.51.100.4",
    )


def test_a_redundancy_change_records_before_and_after(deployed_vault, alice):
    services.vault_redundancy_set(
        vault=deployed_vault, redundancy=Vault.Redundancy.LOCAL, user=alice
    )
    entry = one_entry(operation=Operation.REDUNDANCY_CHANGE, outcome=Outcome.SUCCEEDED)
    assert entry.detail == {"from": "grs", "to": "lrs"}


def test_a_locked_redundancy_change_is_recorded_as_refused(deployed_vault, alice):
    make_machine(deployed_vault)
    with pytest.raises(ValidationError):
        services.vault_redundancy_set(
            vault=deployed_vault, redundancy=Vault.Redundancy.LOCAL, user=alice
        )
    entry = one_entry(operation=Operation.REDUNDANCY_CHANGE, outcome=Outcome.REFUSED)
    assert entry.reason == selectors.vault_redundancy_locked_reason(deployed_vault)


def test_credentials_download_and_revoke_through_the_pages(client, deployed_vault, alice):
    client.force_login(alice)
    response = client.post(
        reverse("vaults:credentials-download", args=[deployed_vault.pk]),
        {"agent_ready": "on", "single_use": "on"},
        REMOTE_ADDR="192.0.2.44",
    )
    assert response.status_code == 200
    credential = deployed_vault.credentials.get()
    entry = one_entry(
        operation=Operation.CREDENTIALS_DOWNLOAD,
        username="alice",
        address="192.0.2.44",
        resource_kind="vault credentials",
        resource_id=str(credential.pk),
    )
    assert entry.detail["single_use"] is True and entry.detail["role"] == "owner"
    for _ in range(2):  # revoking twice is one revocation
        client.post(reverse("vaults:credentials-revoke", args=[deployed_vault.pk, credential.pk]))
    revoked = ActivityEntry.objects.filter(operation=Operation.CREDENTIALS_REVOKE)
    assert [(e.resource_id, e.outcome) for e in revoked] == [
        (str(credential.pk), Outcome.SUCCEEDED)
    ]


def test_a_reader_cannot_download_credentials_and_that_is_recorded(client, deployed_vault, member):
    client.force_login(member(Role.READER))
    response = client.post(
        reverse("vaults:credentials-download", args=[deployed_vault.pk]), {"agent_ready": "on"}
    )
    assert response.status_code == 403
    assert not deployed_vault.credentials.exists()
    one_entry(operation=Operation.CREDENTIALS_DOWNLOAD, outcome=Outcome.REFUSED, username="bob")


def test_an_outsider_gets_404_and_leaves_nothing_in_the_vaults_log(client, deployed_vault, charlie):
    client.force_login(charlie)
    response = client.post(
        reverse("vaults:credentials-download", args=[deployed_vault.pk]), {"agent_ready": "on"}
    )
    assert response.status_code == 404
    assert not ActivityEntry.objects.exists()
