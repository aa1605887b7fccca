"""The portal's storage endpoint, through a grant, passes the blob-store contract."""

from __future__ import annotations

import pytest

from tests.runtime.blobstore.conformance import BlobStoreContract

pytestmark = pytest.mark.urls("tests.vaults.storage.urls")


@pytest.fixture
def store(grant_store):
    return grant_store


class TestHttpConformance(BlobStoreContract):
    def test_a_listing_spans_several_pages(self, store, monkeypatch):
        monkeypatch.setattr("vaults.storage.views.LIST_PAGE", 3)
        names = [f"index/{n:02d}" for n in range(10)]
        for name in names:
            store.put(name, b"i")
        assert [info.name for info in store.list("index/")] == names
