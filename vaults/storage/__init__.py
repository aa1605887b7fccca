"""Where vault data is stored, portal side: storage accounts (Azure Blob or a local
directory, primary and secondary for GRS), container provisioning, usage, grants for
agents (container-scoped, without delete, revocable at once), and the HTTP endpoint that
serves the local backend to agents. docs/storage-backends.md describes the grant format.

The agent side of the same storage is ``agents.runtime.blobstore``.
"""

from vaults.storage.accounts import (
    AGENT_PERMISSIONS,
    DOWNLOADS_CONTAINER,
    AzureStorageAccount,
    InvalidContainerName,
    LocalStorageAccount,
    StorageAccount,
    check_container_name,
    downloads_store,
    primary_account,
    secondary_account,
    secondary_unavailable_reason,
    zone_redundancy_reason,
)

__all__ = [
    "AGENT_PERMISSIONS",
    "DOWNLOADS_CONTAINER",
    "AzureStorageAccount",
    "InvalidContainerName",
    "LocalStorageAccount",
    "StorageAccount",
    "check_container_name",
    "downloads_store",
    "primary_account",
    "secondary_account",
    "secondary_unavailable_reason",
    "zone_redundancy_reason",
]
