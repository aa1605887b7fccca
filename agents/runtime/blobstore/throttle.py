"""Bandwidth limits (the reference agent's "network throttling"), around any backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from agents.runtime.blobstore.base import BlobInfo, BlobStore


class TokenBucket:
    """``rate`` bytes per second with bursts up to ``capacity`` bytes; thread-safe.

    A request larger than what is in the bucket is admitted by going into debt: it takes
    what it needs, and it (and everyone after it) waits until the debt is paid off. That
    paces a stream of 16 MiB packs at the rate even when the bucket holds less than one.
    """

    def __init__(
        self,
        rate: float,
        *,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._rate = 0.0
        self._capacity = 0.0
        self._tokens = 0.0
        self._stamp = clock()
        self.set_rate(rate, capacity=capacity)
        self._tokens = self._capacity  # start full: the first burst goes at once

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float, *, capacity: float | None = None) -> None:
        """Change the limit (e.g. at the start of work hours); waiters keep their slot."""
        if rate <= 0:
            raise ValueError(f"a bandwidth limit must be positive, got {rate}")
        with self._lock:
            self._refill()
            self._rate = float(rate)
            # Default burst: a quarter of a second's worth, at least 64 KiB.
            self._capacity = float(capacity if capacity is not None else max(rate / 4, 65536))
            self._tokens = min(self._tokens, self._capacity)

    def _refill(self) -> None:
        now = self._clock()
        if self._rate:
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self, amount: int) -> float:
        """Reserve ``amount`` bytes, sleep until they are paid for; returns the pause."""
        if amount <= 0:
            return 0.0
        with self._lock:
            self._refill()
            self._tokens -= amount
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait:
            self._sleep(wait)
        return wait


class ThrottledStore(BlobStore):
    """Limits upload (``put``) and download (``get``/``get_range``) bandwidth, each in bytes
    per second (``None``: unlimited). One bucket per direction is shared by every thread
    using this store, so the limit holds for the whole machine's backup, not per thread.

    Uploads are paid for before they are sent, downloads after they arrive (their size is
    known only then); averaged over more than a few blobs the rate holds either way.
    """

    def __init__(
        self,
        inner: BlobStore,
        *,
        upload_bytes_per_second: float | None = None,
        download_bytes_per_second: float | None = None,
        burst_bytes: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self._burst = burst_bytes
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self.upload: TokenBucket | None = None
        self.download: TokenBucket | None = None
        self.set_limits(
            upload_bytes_per_second=upload_bytes_per_second,
            download_bytes_per_second=download_bytes_per_second,
        )

    def _bucket(self, current: TokenBucket | None, rate: float | None) -> TokenBucket | None:
        if rate is None:
            return None
        if current is None:
            return TokenBucket(rate, capacity=self._burst, clock=self._clock, sleep=self._sleep)
        current.set_rate(rate, capacity=self._burst)
        return current

    def set_limits(
        self,
        *,
        upload_bytes_per_second: float | None,
        download_bytes_per_second: float | None,
    ) -> None:
        """Change the limits while transfers run (work hours / non-work hours)."""
        with self._lock:
            self.upload = self._bucket(self.upload, upload_bytes_per_second)
            self.download = self._bucket(self.download, download_bytes_per_second)

    @property
    def fork_safe_reads(self) -> bool:  # a download limit must hold for all readers together
        return self.download is None and self.inner.fork_safe_reads

    def put(self, name: str, data: bytes | memoryview) -> None:
        bucket = self.upload
        if bucket is not None:
            bucket.take(memoryview(data).nbytes)
        self.inner.put(name, data)

    def get(self, name: str) -> bytes:
        data = self.inner.get(name)
        bucket = self.download
        if bucket is not None:
            bucket.take(len(data))
        return data

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        data = self.inner.get_range(name, offset, length)
        bucket = self.download
        if bucket is not None:
            bucket.take(len(data))
        return data

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        up = self.upload.rate if self.upload else None
        down = self.download.rate if self.download else None
        return f"ThrottledStore({self.inner!r}, upload={up}, download={down})"
