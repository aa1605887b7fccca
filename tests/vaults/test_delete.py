"""Deleting a vault: refused while something remains, otherwise the storage goes too."""

from __future__ import annotations

import pytest
from django.utils import timezone

from agents.models import Machine
from agents.runtime.blobstore import StorageUnavailable
from tests.vaults.conftest import make_machine, make_vault
from vaults import selectors, services, storage
from vaults.models import Vault, VaultCredential

pytestmark = pytest.mark.usefixtures("vault_env")


def test_an_empty_vault_is_deleted_with_its_storage(deployed_vault, alice):
    from vaults.credentials import credentials_issue

    credentials_issue(vault=deployed_vault, issued_by=alice)
    container = deployed_vault.container
    services.vault_delete(vault=deployed_vault, user=alice)
    assert not Vault.objects.exists()
    assert not VaultCredential.objects.exists()
    assert not storage.primary_account().container_exists(container)
    assert not storage.secondary_account().container_exists(container)


def test_registered_machines_block_it_and_are_listed(deployed_vault, alice):
    make_machine(deployed_vault, "web-01")
    make_machine(deployed_vault, "web-02")
    with pytest.raises(services.VaultDeleteBlocked) as caught:
        services.vault_delete(vault=deployed_vault, user=alice)
    (blocker,) = caught.value.blockers
    assert blocker.what == "2 registered machines"
    assert "Unregister" in blocker.action
    assert Vault.objects.filter(pk=deployed_vault.pk).exists()
    assert storage.primary_account().container_exists(deployed_vault.container)


def test_unregistered_machines_go_with_the_vault(deployed_vault, alice):
    make_machine(deployed_vault, unregistered_at=timezone.now())
    services.vault_delete(vault=deployed_vault, user=alice)
    assert not Machine.objects.exists()


def test_other_apps_add_blockers(deployed_vault, alice, monkeypatch):
    extra = selectors.DeleteBlocker(what="4 recovery points", action="Delete backup data first.")
    monkeypatch.setattr(selectors, "_delete_blockers", [lambda v: [extra]])
    make_machine(deployed_vault)
    blockers = selectors.vault_delete_blockers(deployed_vault)
    assert [b.what for b in blockers] == ["1 registered machine", "4 recovery points"]


def test_a_failed_vault_without_storage_is_simply_removed(resource_group, alice):
    vault = make_vault(resource_group, state=Vault.State.FAILED)
    services.vault_delete(vault=vault, user=alice)
    assert not Vault.objects.exists()


def test_unreachable_storage_keeps_the_vault(deployed_vault, alice, monkeypatch, tmp_path):
    class Unreachable:
        def delete_container(self, name):
            raise StorageUnavailable("the storage account did not answer")

    monkeypatch.setattr(storage, "primary_account", Unreachable)
    with pytest.raises(services.VaultStorageError) as caught:
        services.vault_delete(vault=deployed_vault, user=alice)
    assert "did not answer" in str(caught.value) and "kept" in str(caught.value)
    assert Vault.objects.filter(pk=deployed_vault.pk).exists()
