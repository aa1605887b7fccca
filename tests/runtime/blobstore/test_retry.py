"""RetryingStore retries transient failures only, with capped, jittered backoff, or after the
time a busy server asked for (its Retry-After, bounded)."""

from __future__ import annotations

import random

import pytest

from agents.runtime.blobstore import (
    BlobForbidden,
    BlobNotFound,
    GrantExpired,
    MemoryStore,
    RetryingStore,
    StorageUnavailable,
)
from agents.runtime.blobstore.http import HttpGrantStore
from tests.support.busyserver import BusyServer


class FlakyStore(MemoryStore):
    """Fails the first ``failures`` calls of each method with the given error."""

    def __init__(self, error: Exception, failures: int) -> None:
        super().__init__()
        self.error = error
        self.failures = failures
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.calls[method] <= self.failures:
            raise self.error

    def put(self, name, data):
        self._maybe_fail("put")
        super().put(name, data)

    def get(self, name):
        self._maybe_fail("get")
        return super().get(name)


def retrying(inner, **kwargs):
    pauses: list[float] = []
    store = RetryingStore(inner, sleep=pauses.append, rng=random.Random(1), **kwargs)
    return store, pauses


def test_it_retries_unavailable_storage_until_it_answers():
    inner = FlakyStore(
        StorageUnavailable("Azure Storage at x did not answer: timed out"), failures=3
    )
    store, pauses = retrying(inner)
    store.put("a", b"1")
    assert inner.calls["put"] == 4
    assert len(pauses) == 3
    assert MemoryStore.get(inner, "a") == b"1"


@pytest.mark.parametrize(
    "error",
    [BlobNotFound("a"), BlobForbidden("no delete"), GrantExpired("expired")],
    ids=["not-found", "forbidden", "expired"],
)
def test_it_never_retries_answers(error):
    inner = FlakyStore(error, failures=1)
    store, pauses = retrying(inner)
    with pytest.raises(type(error)):
        store.get("a")
    assert inner.calls["get"] == 1
    assert pauses == []


def test_it_gives_up_after_the_last_attempt_with_the_last_error():
    inner = FlakyStore(StorageUnavailable("still down"), failures=100)
    store, pauses = retrying(inner, attempts=4)
    with pytest.raises(StorageUnavailable, match="still down"):
        store.put("a", b"1")
    assert inner.calls["put"] == 4
    assert len(pauses) == 3


def test_backoff_grows_is_capped_and_jittered():
    store = RetryingStore(MemoryStore(), base_delay=0.5, max_delay=4, rng=random.Random(3))
    for retry in range(10):
        caps = min(4, 0.5 * 2**retry)
        samples = [store.delay(retry) for _ in range(200)]
        assert all(0 <= s <= caps for s in samples)
        assert len(set(samples)) > 100  # jittered, not a fixed schedule
    assert max(store.delay(9) for _ in range(200)) > 3  # the cap, not the exponent, limits


def test_a_listing_resumes_without_repeating_names():
    class FailingOnceMidList(MemoryStore):
        failed = False

        def list(self, prefix=""):
            for n, info in enumerate(super().list(prefix)):
                if n == 2 and not self.failed:
                    self.failed = True
                    raise StorageUnavailable("connection reset mid-list")
                yield info

    inner = FailingOnceMidList()
    for name in "abcde":
        inner.put(name, b"x")
    store, pauses = retrying(inner)
    assert [i.name for i in store.list()] == list("abcde")
    assert len(pauses) == 1


@pytest.mark.parametrize(
    ("status", "header", "low", "high"),
    [
        (503, "2", 2.0, 2.2),  # what the server asked, and up to a tenth more
        (429, "7200", 60.0, 60.0),  # never more than max_retry_after
        (503, None, 0.0, 0.5),  # no Retry-After: the usual backoff
        (500, "2", 0.0, 0.5),  # Retry-After is read on 429 and 503 only
    ],
    ids=["503-retry-after", "429-capped", "503-no-header", "500-ignored"],
)
def test_a_busy_portal_storage_is_called_again_when_it_said(status, header, low, high):
    server = BusyServer(1, status=status, retry_after=header)
    store, pauses = retrying(HttpGrantStore(server.url + "/storage/vault-1/", "token"))
    try:
        store.put("packs/1", b"data")
    finally:
        store.close()
        server.close()
    assert [method for method, _, _ in server.seen] == ["PUT", "PUT"]
    (pause,) = pauses
    assert low <= pause <= high


def test_the_wait_a_server_asks_for_replaces_the_backoff_and_is_bounded():
    inner = FlakyStore(StorageUnavailable("busy", retry_after=5.0), failures=2)
    store, pauses = retrying(inner, max_retry_after=5.2)
    store.put("a", b"1")
    assert len(pauses) == 2 and all(5.0 <= p <= 5.2 for p in pauses)
