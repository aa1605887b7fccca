"""Connection pools of the portal's processes (docs/configuration.md, "Sizing connections").

PostgreSQL's is psycopg's, set up by Django from ``DATABASES[...]["OPTIONS"]["pool"]``. A
process forked from one that used it (a Celery worker's child, a test's live server) must
not take the parent's pooled connections: both would talk over the same sockets.
``forget_inherited_pools`` runs in every forked child and sets them aside, unclosed
(closing would end the parent's sessions too); the child opens its own.

Redis' own pools open a new connection whenever none is free, without limit; the blocking
pools here wait for one instead (up to their ``timeout``) once ``max_connections`` are open.

- ``SharedBlockingConnectionPool``: Django's cache. Django keeps one cache object per
  request context and each would build its own pool; this one is shared by every cache
  object of the process with the same address and options.
- ``BoundedRedisChannelLayer``: channels-redis with a blocking pool per event loop.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Any, ClassVar

import redis
from channels_redis.core import RedisChannelLayer
from redis import asyncio as aioredis

_inherited: list[Any] = []  # the parent's pools, kept (never used, never closed) in a child


def forget_inherited_pools() -> None:
    backend = sys.modules.get("django.db.backends.postgresql.base")
    if backend is None:  # the parent never used PostgreSQL
        return
    DatabaseWrapper = backend.DatabaseWrapper
    _inherited.extend(DatabaseWrapper._connection_pools.values())
    DatabaseWrapper._connection_pools.clear()


def install_fork_hook() -> None:
    os.register_at_fork(after_in_child=forget_inherited_pools)


class RedisPoolTimeout(redis.ConnectionError):
    """No connection of the pool came free within its timeout (the portal is busy, Redis
    itself may be fine): answered 503 with Retry-After (``portal.concurrency``)."""


class SharedBlockingConnectionPool(redis.BlockingConnectionPool):
    _shared: ClassVar[dict[tuple, redis.BlockingConnectionPool]] = {}
    _lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.BlockingConnectionPool:  # type: ignore[override]
        key = (os.getpid(), url, tuple(sorted((name, repr(v)) for name, v in kwargs.items())))
        with cls._lock:
            pool = cls._shared.get(key)
            if pool is None:
                pool = cls._shared[key] = super().from_url(url, **kwargs)
            return pool

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)
        except redis.ConnectionError as exc:
            # redis-py raises its plain ConnectionError from the empty queue's exception.
            if isinstance(exc.__context__, queue.Empty):
                raise RedisPoolTimeout(f"no Redis connection free within {self.timeout} s") from exc
            raise


class BoundedRedisChannelLayer(RedisChannelLayer):
    """Hosts as ``{"address": url, "max_connections": n, "timeout": seconds}``."""

    def create_pool(self, index: int) -> aioredis.BlockingConnectionPool:
        host = dict(self.hosts[index])
        address = host.pop("address")
        return aioredis.BlockingConnectionPool.from_url(address, **host)
