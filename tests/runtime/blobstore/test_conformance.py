"""Every agent-side backend passes the same contract. The portal's HTTP endpoint runs the
same contract in tests/vaults/storage/test_http_conformance.py (it needs a live server)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agents.runtime.blobstore import MemoryStore, RetryingStore, ThrottledStore, open_grant
from agents.runtime.blobstore.azure import AzureBlobStore
from agents.runtime.blobstore.local import LocalDirectoryStore
from tests.runtime.blobstore.conformance import BlobStoreContract
from tests.runtime.blobstore.conftest import sas_grant


@pytest.fixture(params=["memory", "local", "azurite", "azurite-sas", "wrapped"])
def store(request, tmp_path):
    kind = request.param
    if kind == "memory":
        yield MemoryStore()
    elif kind == "local":
        yield LocalDirectoryStore(tmp_path / "container", create=True)
    elif kind == "wrapped":
        # The wrappers must not change behaviour, only timing.
        yield RetryingStore(ThrottledStore(MemoryStore(), upload_bytes_per_second=10**12))
    else:
        container = request.getfixturevalue("azure_container")
        if kind == "azurite":
            connection_string = request.getfixturevalue("azurite")
            store = AzureBlobStore.from_connection_string(
                connection_string, container.container_name
            )
        else:
            store = open_grant(sas_grant(container, "rcld", expires_in=timedelta(hours=1)))
            assert isinstance(store, AzureBlobStore)
        yield store
        store.close()


class TestConformance(BlobStoreContract):
    pass
