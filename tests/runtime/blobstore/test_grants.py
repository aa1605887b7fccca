"""open_grant turns a portal grant into the right store, or says why it cannot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agents.runtime.blobstore import GrantExpired, InvalidGrant, open_grant
from agents.runtime.blobstore.azure import AzureBlobStore
from agents.runtime.blobstore.http import HttpGrantStore

LATER = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
PROXIES = {"https": "http://proxy.example:3128", "http": "http://proxy.example:3128"}


def http_grant(**overrides):
    grant = {
        "kind": "haven-http",
        "container": "vault-1",
        "base_url": "https://portal.example/storage/vault-1/",
        "token": "secret-token",
        "permissions": "rcl",
        "expires_at": LATER,
    }
    return {**grant, **overrides}


def azure_grant(**overrides):
    grant = {
        "kind": "azure-sas",
        "container": "vault-1",
        "container_url": "https://acct.blob.core.windows.net/vault-1",
        "sas": "sv=2024-01-01&si=haven-rcl-00&sr=c&sig=abc",
        "permissions": "rcl",
        "expires_at": LATER,
    }
    return {**grant, **overrides}


def test_an_http_grant_opens_the_portal_store_through_the_proxy():
    store = open_grant(http_grant(), proxies=PROXIES)
    assert isinstance(store, HttpGrantStore)
    assert store.base_url == "https://portal.example/storage/vault-1/"
    assert store.proxies == PROXIES
    assert "secret-token" not in repr(store)


def test_an_azure_grant_opens_the_container_through_the_proxy():
    store = open_grant(azure_grant(), proxies=PROXIES)
    assert isinstance(store, AzureBlobStore)
    assert store.container_name == "vault-1"
    assert store.expires_at == datetime.fromisoformat(LATER)
    transport_proxies = store._container._config.proxy_policy.proxies
    assert transport_proxies == PROXIES


def test_an_unknown_kind_asks_for_an_agent_update():
    with pytest.raises(InvalidGrant, match="update the agent"):
        open_grant(http_grant(kind="s3-presigned"))


@pytest.mark.parametrize("field", ["base_url", "token", "expires_at"])
def test_a_missing_field_is_named(field):
    grant = http_grant()
    del grant[field]
    with pytest.raises(InvalidGrant, match=field):
        open_grant(grant)


def test_a_date_without_time_zone_is_refused():
    with pytest.raises(InvalidGrant, match="no time zone"):
        open_grant(http_grant(expires_at="2100-01-01T00:00:00"))


def test_an_expired_grant_is_refused_before_any_request():
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    with pytest.raises(GrantExpired, match="ask the portal for a new one"):
        open_grant(azure_grant(expires_at=past))
    store = open_grant(http_grant(expires_at=past), check_expiry=False)
    with pytest.raises(GrantExpired):
        store.get("a")
