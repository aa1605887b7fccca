"""Backend failures become this package's named errors, with messages a person can act on."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agents.runtime.blobstore import (
    BlobForbidden,
    ContainerNotFound,
    StorageUnavailable,
    open_grant,
)
from agents.runtime.blobstore.azure import AzureBlobStore
from agents.runtime.blobstore.http import HttpGrantStore
from tests.runtime.blobstore.conftest import sas_grant, unique_container
from tests.support.servers import azurite_connection_string, free_port


def test_unreachable_azure_is_unavailable_and_says_where():
    port = free_port()
    store = AzureBlobStore.from_connection_string(
        azurite_connection_string(port), "vault-1", retries=0
    )
    with pytest.raises(StorageUnavailable) as caught:
        store.get("config")
    assert (
        str(caught.value) == f"Azure Storage at 127.0.0.1:{port} did not answer: connection refused"
    )


def test_unreachable_portal_is_unavailable_and_says_where():
    port = free_port()
    store = HttpGrantStore(f"http://127.0.0.1:{port}/storage/vault-1/", "token")
    with pytest.raises(StorageUnavailable) as caught:
        store.put("config", b"x")
    assert str(caught.value) == (
        f"the Haven portal storage at 127.0.0.1:{port} did not answer: connection refused"
    )


def test_a_sas_without_delete_is_forbidden_to_delete(azure_container):
    azure_container.upload_blob("packs/1", b"data")
    store = open_grant(sas_grant(azure_container, "rcl", expires_in=timedelta(hours=1)))
    store.put("packs/2", b"more")
    assert store.get("packs/1") == b"data"
    with pytest.raises(BlobForbidden) as caught:
        store.delete("packs/1")
    assert str(caught.value) == (
        f"the storage grant does not allow you to delete 'packs/1' in container "
        f"{azure_container.container_name!r}"
    )
    assert azure_container.get_blob_client("packs/1").exists()


def test_an_expired_plain_sas_is_refused_by_azurite(azure_container):
    grant = sas_grant(azure_container, "rcl", expires_in=timedelta(minutes=-1))
    store = AzureBlobStore.from_container_url(grant["container_url"], sas=grant["sas"])
    with pytest.raises(BlobForbidden, match="refused the credentials"):
        store.get("a")


def test_a_missing_container_is_named(azurite):
    name = unique_container()
    store = AzureBlobStore.from_connection_string(azurite, name)
    with pytest.raises(ContainerNotFound, match=f"container '{name}' does not exist"):
        store.put("a", b"x")
    with pytest.raises(ContainerNotFound):
        list(store.list())
