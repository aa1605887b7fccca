"""haven-agent check's pieces and the cache-space check before a backup."""

from __future__ import annotations

from collections import namedtuple
from datetime import UTC, datetime, timedelta

import pytest

from agents.runtime import checks
from agents.runtime.config import Registration

Usage = namedtuple("Usage", "total used free")


def test_the_cache_needs_five_percent_of_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda _p: Usage(10**12, 0, 50 * 2**20))
    assert checks.check_cache_space(tmp_path / "cache", 1000 * 2**20) == 50 * 2**20
    with pytest.raises(checks.CacheTooSmall) as caught:
        checks.check_cache_space(tmp_path / "cache", 1001 * 2**20)
    message = str(caught.value)
    assert "has 50.0 MB free" in message and "needs at least 50.1 MB (5% of the data)" in message
    assert "haven-agent configure --cache-dir" in message


def test_clock_skew_is_named_with_a_fix():
    now = datetime.now(UTC)
    assert checks.check_clock({"time": now.isoformat()}, now=now + timedelta(seconds=3)).ok
    result = checks.check_clock({"time": now.isoformat()}, now=now + timedelta(minutes=9))
    assert not result.ok and "540 s ahead of" in result.detail and "timedatectl" in result.hint


def _registration(url: str) -> Registration:
    return Registration(
        portal_url="http://p",
        portal_public_key="",
        portal_fingerprint="",
        subscription_id="",
        subscription_name="",
        resource_group="",
        vault_id="v",
        vault_name="v",
        machine_id="m",
        machine_name="m",
        token="t",
        broker_url=url,
        queue="agent.m",
    )


def test_an_unreachable_broker_says_what_to_open():
    from tests.support.servers import free_port

    result = checks.check_broker(_registration(f"redis://u:p@127.0.0.1:{free_port()}/0"), timeout=1)
    assert not result.ok and "cannot reach the broker at 127.0.0.1" in result.detail
    assert "u:p" not in result.detail and "port 6379" in result.hint


def test_unreachable_storage_is_named():
    from agents.runtime.blobstore import StorageUnavailable

    def opener(grant, proxies=None):
        raise StorageUnavailable("connection refused")

    result = checks.check_storage(
        _registration("redis://x"), checks.Settings(), store_opener=opener
    )
    assert not result.ok and "cannot reach the vault's storage" in result.detail


def test_an_unreachable_portal_is_named():
    from agents.runtime.portal_api import PortalClient
    from tests.support.servers import free_port

    result, identity = checks.check_portal(PortalClient(f"http://127.0.0.1:{free_port()}"))
    assert not result.ok and identity == {} and "connection refused" in result.detail


def test_a_bandwidth_limit_throttles_the_storage_both_ways(monkeypatch):
    from agents.runtime import blobstore, storage_grant
    from agents.runtime.blobstore.memory import MemoryStore

    monkeypatch.setattr(storage_grant, "open_grant", lambda grant, proxies=None: MemoryStore())
    assert not isinstance(storage_grant.open_store({}), blobstore.ThrottledStore)
    store = storage_grant.open_store({}, bandwidth_limit=2**20)
    assert isinstance(store, blobstore.ThrottledStore)
    assert store.upload.rate == store.download.rate == 2**20
