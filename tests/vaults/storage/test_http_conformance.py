"""The portal's storage endpoint, through a grant, passes the blob-store contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agents.runtime.blobstore import open_grant
from agents.runtime.blobstore.http import HttpGrantStore
from tests.runtime.blobstore.conformance import BlobStoreContract
from vaults.storage import primary_account

pytestmark = pytest.mark.urls("tests.vaults.storage.urls")


@pytest.fixture
def store(served, local_container):
    grant = primary_account().issue_grant(
        local_container, expires_at=datetime.now(UTC) + timedelta(hours=1), permissions="rcwld"
    )
    store = open_grant(grant)
    assert isinstance(store, HttpGrantStore)
    yield store
    store.close()


class TestHttpConformance(BlobStoreContract):
    def test_a_listing_spans_several_pages(self, store, monkeypatch):
        monkeypatch.setattr("vaults.storage.views.LIST_PAGE", 3)
        names = [f"index/{n:02d}" for n in range(10)]
        for name in names:
            store.put(name, b"i")
        assert [info.name for info in store.list("index/")] == names
