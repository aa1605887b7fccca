"""Storage accounts pointed at temporary directories or at the test Azurite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from vaults.storage import primary_account


@pytest.fixture
def local_storage(settings, tmp_path):
    """The local-directory backend, in temporary directories."""
    settings.AZURE_STORAGE_CONNECTION_STRING = None
    settings.SECONDARY_STORAGE_CONNECTION_STRING = None
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.SECONDARY_STORAGE_DIR = tmp_path / "storage-secondary"
    settings.HAVEN_PUBLIC_URL = "http://testserver"
    return settings


@pytest.fixture
def azure_storage(settings, azurite):
    """The Azure backend, on the test Azurite."""
    settings.AZURE_STORAGE_CONNECTION_STRING = azurite
    return settings


@pytest.fixture
def container_name() -> str:
    return f"vault-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def served(local_storage, live_server):
    """The local backend served by a live portal; grants point at it."""
    local_storage.HAVEN_PUBLIC_URL = live_server.url
    return live_server


@pytest.fixture
def local_container(local_storage, container_name):
    account = primary_account()
    account.create_container(container_name)
    yield container_name
    account.delete_container(container_name)


@pytest.fixture
def azure_container(azure_storage, container_name):
    account = primary_account()
    account.create_container(container_name)
    yield container_name
    account.delete_container(container_name)


@pytest.fixture
def grant_store(served, local_container):
    """The portal's storage endpoint through a one-hour read-create-list-delete grant."""
    from agents.runtime.blobstore import open_grant
    from agents.runtime.blobstore.http import HttpGrantStore

    grant = primary_account().issue_grant(
        local_container, expires_at=datetime.now(UTC) + timedelta(hours=1), permissions="rcld"
    )
    store = open_grant(grant)
    assert isinstance(store, HttpGrantStore)
    yield store
    store.close()
