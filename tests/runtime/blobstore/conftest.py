"""Fixtures for the blob-store tests: Azurite containers, fresh names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_container_sas,
)


def unique_container() -> str:
    return f"t-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def azure_container(azurite) -> Iterator[ContainerClient]:
    """An empty Azurite container (account-key rights), deleted afterwards."""
    service = BlobServiceClient.from_connection_string(azurite)
    client = service.create_container(unique_container())
    yield client
    client.delete_container()
    service.close()


def container_sas(client: ContainerClient, permissions: str, *, expires_in: timedelta) -> str:
    """A plain (policy-less) container SAS, as a test helper independent of the portal."""
    now = datetime.now(UTC)
    return generate_container_sas(
        client.account_name,
        client.container_name,
        account_key=client.credential.account_key,
        permission=ContainerSasPermissions.from_string(permissions),
        expiry=now + expires_in,
        start=now - timedelta(minutes=5),
    )


def sas_grant(client: ContainerClient, permissions: str, *, expires_in: timedelta) -> dict:
    return {
        "kind": "azure-sas",
        "container": client.container_name,
        "container_url": client.url,
        "sas": container_sas(client, permissions, expires_in=expires_in),
        "permissions": permissions,
        "expires_at": (datetime.now(UTC) + expires_in).replace(microsecond=0).isoformat(),
    }
