"""ThrottledStore holds bandwidth to the limit, across threads."""

from __future__ import annotations

import threading
import time

import pytest

from agents.runtime.blobstore import MemoryStore, ThrottledStore
from agents.runtime.blobstore.throttle import TokenBucket

KiB = 1024


@pytest.mark.alone
def test_uploads_are_held_to_the_limit():
    limit = 1024 * KiB  # bytes per second
    store = ThrottledStore(MemoryStore(), upload_bytes_per_second=limit, burst_bytes=64 * KiB)
    blob = b"x" * (64 * KiB)
    start = time.monotonic()
    for n in range(16):  # 1 MiB in all; the first 64 KiB ride the burst
        store.put(f"packs/{n}", blob)
    elapsed = time.monotonic() - start
    expected = (16 * 64 * KiB - 64 * KiB) / limit  # ~0.94 s
    assert expected * 0.95 <= elapsed < 2.0
    assert 16 * 64 * KiB / elapsed <= limit * 1.1


@pytest.mark.alone
def test_threads_share_one_limit():
    limit = 2048 * KiB
    store = ThrottledStore(MemoryStore(), upload_bytes_per_second=limit, burst_bytes=64 * KiB)
    blob = b"y" * (64 * KiB)

    def work(worker: int) -> None:
        for n in range(6):
            store.put(f"{worker}/{n}", blob)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    total = 4 * 6 * 64 * KiB  # 1.5 MiB at 2 MiB/s
    assert (total - 64 * KiB) / limit * 0.95 <= elapsed < 2.0


@pytest.mark.alone
def test_downloads_have_their_own_limit_and_uploads_stay_free():
    inner = MemoryStore()
    inner.put("big", b"z" * (256 * KiB))
    store = ThrottledStore(inner, download_bytes_per_second=512 * KiB, burst_bytes=64 * KiB)
    start = time.monotonic()
    for _ in range(4):
        store.put("free", b"u" * (256 * KiB))
    assert time.monotonic() - start < 0.2
    start = time.monotonic()
    store.get("big")
    store.get_range("big", 0, 128 * KiB)
    elapsed = time.monotonic() - start
    assert (384 * KiB - 64 * KiB) / (512 * KiB) * 0.95 <= elapsed < 2.0


def test_a_blob_larger_than_the_burst_is_paced_by_debt():
    clock = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        clock[0] += seconds

    bucket = TokenBucket(1000, capacity=100, clock=lambda: clock[0], sleep=sleep)
    assert bucket.take(100) == 0  # the full bucket
    assert bucket.take(500) == pytest.approx(0.5)  # 500 bytes of debt at 1000 B/s
    assert bucket.take(100) == pytest.approx(0.1)  # the debt was paid by waiting, no credit
    assert pauses == [pytest.approx(0.5), pytest.approx(0.1)]


def test_limits_change_while_running():
    store = ThrottledStore(MemoryStore(), upload_bytes_per_second=100)
    store.set_limits(upload_bytes_per_second=None, download_bytes_per_second=1000)
    assert store.upload is None and store.download.rate == 1000
    with pytest.raises(ValueError, match="positive"):
        store.set_limits(upload_bytes_per_second=0, download_bytes_per_second=None)
