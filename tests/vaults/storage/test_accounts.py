"""Choosing and provisioning storage accounts, on both backends."""

from __future__ import annotations

from datetime import datetime

import pytest

from agents.runtime.blobstore import ContainerNotFound, StorageUnavailable
from tests.support.servers import azurite_connection_string, free_port
from vaults.storage import (
    AzureStorageAccount,
    InvalidContainerName,
    LocalStorageAccount,
    primary_account,
    secondary_account,
    secondary_unavailable_reason,
    zone_redundancy_reason,
)


def test_without_azure_the_accounts_are_local_directories(local_storage):
    primary, secondary = primary_account(), secondary_account()
    assert isinstance(primary, LocalStorageAccount)
    assert primary.root == local_storage.STORAGE_DIR
    assert isinstance(secondary, LocalStorageAccount)
    assert secondary.root == local_storage.SECONDARY_STORAGE_DIR
    assert secondary.role == "secondary"


@pytest.mark.parametrize("folder", ["", None, "same"])
def test_no_second_directory_means_no_secondary(local_storage, folder):
    """Never a copy beside the original: an empty setting, or the primary's own directory."""
    local_storage.SECONDARY_STORAGE_DIR = local_storage.STORAGE_DIR if folder == "same" else folder
    assert secondary_account() is None
    assert "HAVEN_SECONDARY_STORAGE_DIR" in secondary_unavailable_reason()


def test_with_a_connection_string_the_accounts_are_azure(azure_storage, azurite_secondary):
    assert secondary_account() is None  # a second Azure account, or none
    assert "HAVEN_SECONDARY_STORAGE_CONNECTION_STRING" in secondary_unavailable_reason()
    azure_storage.SECONDARY_STORAGE_CONNECTION_STRING = azurite_secondary
    primary, secondary = primary_account(), secondary_account()
    assert isinstance(primary, AzureStorageAccount)
    assert isinstance(secondary, AzureStorageAccount)
    assert secondary.endpoint != primary.endpoint and secondary.role == "secondary"
    assert primary_account() is primary  # one client (and connection pool) per process


def test_zone_redundancy_is_offered_only_for_a_zone_redundant_azure_account(
    local_storage, monkeypatch
):
    assert "local directory" in zone_redundancy_reason()
    local_storage.AZURE_STORAGE_CONNECTION_STRING = azurite_connection_string(1)
    for sku, offered in (("Standard_ZRS", True), ("Standard_GZRS", True), ("Standard_LRS", False)):
        monkeypatch.setattr(AzureStorageAccount, "sku", lambda self, sku=sku: sku)
        assert (zone_redundancy_reason() == "") is offered, sku


@pytest.fixture(params=["local", "azure"])
def account(request, tmp_path, settings):
    if request.param == "local":
        request.getfixturevalue("local_storage")
    else:
        request.getfixturevalue("azure_storage")
    return primary_account()


def test_provisioning_round_trip(account, container_name):
    account.ping()
    assert not account.container_exists(container_name)
    account.create_container(container_name)
    account.create_container(container_name)  # idempotent
    assert account.container_exists(container_name)
    store = account.store(container_name)
    store.put("packs/a", b"x" * 1000)
    store.put("index/b", b"y" * 24)
    assert account.usage(container_name) == 1024
    store.delete("packs/a")  # the portal holds delete rights
    assert account.usage(container_name) == 24
    account.delete_container(container_name)
    assert not account.container_exists(container_name)
    account.delete_container(container_name)  # nothing to do, no error


def test_a_missing_container_is_named(account, container_name):
    with pytest.raises(ContainerNotFound, match=container_name):
        list(account.store(container_name).list())
    with pytest.raises(ContainerNotFound, match=container_name):
        account.issue_grant(container_name, expires_at=datetime.fromisoformat("2100-01-01T00:00Z"))


def test_container_names_follow_azure_rules(account):
    for bad in ["ab", "Vault", "-vault", "vault-", "va--ult", "vault_1", "x" * 64]:
        with pytest.raises(InvalidContainerName, match="3 to 63 lowercase"):
            account.create_container(bad)


def test_grant_arguments_are_checked(account, container_name):
    account.create_container(container_name)
    try:
        with pytest.raises(ValueError, match="timezone-aware"):
            account.issue_grant(container_name, expires_at=datetime(2100, 1, 1))
        with pytest.raises(ValueError, match="letters from 'rcld'"):
            account.issue_grant(
                container_name,
                expires_at=datetime.fromisoformat("2100-01-01T00:00Z"),
                permissions="rx",
            )
    finally:
        account.delete_container(container_name)


def test_ping_says_plainly_when_azure_does_not_answer():
    port = free_port()  # nothing listens there
    account = AzureStorageAccount(azurite_connection_string(port))
    with pytest.raises(StorageUnavailable) as caught:
        account.ping()
    assert (
        str(caught.value) == f"Azure Storage at 127.0.0.1:{port} did not answer: connection refused"
    )


def test_ping_says_plainly_when_the_directory_is_unusable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(
        StorageUnavailable, match=f"the storage directory {blocker / 'storage'} is not usable"
    ):
        LocalStorageAccount(blocker / "storage").ping()
