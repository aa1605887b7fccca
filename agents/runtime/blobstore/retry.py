"""Retrying transient storage failures, around any backend."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from agents.runtime.blobstore.base import BlobInfo, BlobStore, StorageUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryingStore(BlobStore):
    """Retries ``StorageUnavailable`` (unreachable, timeouts, 5xx, throttling) with capped
    exponential backoff and full jitter, so many threads that failed together do not come
    back together. Everything else — ``BlobNotFound``, ``BlobForbidden``, ``GrantExpired``,
    bad names — is an answer, not a hiccup, and is raised at once.

    ``attempts`` counts the first try: 6 attempts with the defaults wait at most
    0.5 + 1 + 2 + 4 + 8 s (each a random fraction of that), under half a minute. A server
    that says when to come back (``StorageUnavailable.retry_after``, from its
    ``Retry-After``) is waited that long instead, plus up to a tenth more so that threads do
    not return together, and never more than ``max_retry_after`` seconds.
    """

    def __init__(
        self,
        inner: BlobStore,
        *,
        attempts: int = 6,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._rng = rng or random.Random()

    @property
    def fork_safe_reads(self) -> bool:  # retrying shares nothing between processes
        return self.inner.fork_safe_reads

    def delay(self, retry: int, exc: StorageUnavailable | None = None) -> float:
        """The pause before retry number ``retry`` (0-based) after ``exc``: the server's
        ``retry_after`` when it gave one, else uniform in [0, backoff cap]."""
        if exc is not None and exc.retry_after is not None:
            wanted = exc.retry_after * self._rng.uniform(1.0, 1.1)
            return min(wanted, self.max_retry_after)
        cap = min(self.max_delay, self.base_delay * (2**retry))
        return self._rng.uniform(0, cap)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for retry in range(self.attempts):
            try:
                return fn()
            except StorageUnavailable as exc:
                if retry == self.attempts - 1:
                    raise
                pause = self.delay(retry, exc)
                log.warning(
                    "%s failed (%s); retry %d of %d in %.1f s",
                    what,
                    exc,
                    retry + 1,
                    self.attempts - 1,
                    pause,
                )
                self._sleep(pause)
        raise AssertionError("unreachable")

    def put(self, name: str, data: bytes | memoryview) -> None:
        self._call(f"put {name!r}", lambda: self.inner.put(name, data))

    def get(self, name: str) -> bytes:
        return self._call(f"get {name!r}", lambda: self.inner.get(name))

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self._call(f"get {name!r}", lambda: self.inner.get_range(name, offset, length))

    def exists(self, name: str) -> bool:
        return self._call(f"exists {name!r}", lambda: self.inner.exists(name))

    def delete(self, name: str) -> None:
        # A delete that reached the server before the connection broke makes the retry
        # answer BlobNotFound; callers that delete (garbage collection) treat that as done.
        self._call(f"delete {name!r}", lambda: self.inner.delete(name))

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Lists are resumed after a failure: the listing starts again and skips the names
        already yielded (lists are in name order, so "already yielded" is "<= the last")."""
        last: str | None = None
        retry = 0
        while True:
            try:
                for info in self.inner.list(prefix):
                    if last is not None and info.name <= last:
                        continue
                    yield info
                    last = info.name
                    retry = 0
                return
            except StorageUnavailable as exc:
                if retry == self.attempts - 1:
                    raise
                pause = self.delay(retry, exc)
                log.warning("list %r failed (%s); retrying in %.1f s", prefix, exc, pause)
                self._sleep(pause)
                retry += 1

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"RetryingStore({self.inner!r}, attempts={self.attempts})"
