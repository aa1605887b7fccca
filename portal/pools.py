"""Connection pools of the portal's processes (docs/configuration.md, "Sizing connections").

PostgreSQL's is psycopg's, set up by Django from ``DATABASES[...]["OPTIONS"]["pool"]``. A
process forked from one that used it (a Celery worker's child, a test's live server) must
not take the parent's pooled connections: both would talk over the same sockets.
``forget_inherited_pools`` runs in every forked child and sets them aside, unclosed
(closing would end the parent's sessions too); the child opens its own.

Threads do not survive a fork either. A ``ThreadPoolExecutor`` created before the fork
believes, in the child, that its idle worker still waits for work: nothing ever runs what
is submitted to it, and whoever awaits the answer waits for ever. ``ProcessThreadPool`` is
an executor the child builds afresh; the hook also gives the child a new asgiref
single-thread executor (the one ``sync_to_async`` uses for thread-sensitive code outside
any request, e.g. a websocket consumer's database check).

Redis' own pools open a new connection whenever none is free, without limit; the blocking
pools here wait for one instead (up to their ``timeout``) once ``max_connections`` are open.

- ``SharedBlockingConnectionPool``: Django's cache. Django keeps one cache object per
  request context and each would build its own pool; this one is shared by every cache
  object of the process with the same address and options.
- ``PubSubChannelLayer``: channels-redis's pub/sub layer, two connections per event loop.

``LoopBatches`` gathers the hot path's database work that comes together (starts,
heart-beats, token checks) into one call on threads of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import queue
import sys
import threading
import weakref
from typing import Any, ClassVar

import redis
from channels_redis.pubsub import RedisPubSubChannelLayer

_inherited: list[Any] = []  # the parent's pools, kept (never used, never closed) in a child


def forget_inherited_pools() -> None:
    backend = sys.modules.get("django.db.backends.postgresql.base")
    if backend is None:  # the parent never used PostgreSQL
        return
    DatabaseWrapper = backend.DatabaseWrapper
    _inherited.extend(DatabaseWrapper._connection_pools.values())
    DatabaseWrapper._connection_pools.clear()


def forget_inherited_threads() -> None:
    """The executors of a forked child start with no thread, as a new process's do."""
    from asgiref.sync import SyncToAsync

    # The parent's instance is dropped, not shut down: its shutdown would wait on a
    # thread that is not in this process.
    SyncToAsync.single_thread_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    for pool in list(_thread_pools):
        pool._forget()


_hooked = False


def install_fork_hook() -> None:
    global _hooked
    if not _hooked:
        _hooked = True
        os.register_at_fork(after_in_child=forget_inherited_pools)
        os.register_at_fork(after_in_child=forget_inherited_threads)


class ProcessThreadPool(concurrent.futures.Executor):
    """A ``ThreadPoolExecutor`` of the process that uses it: made at the first submit, and
    made again in a forked child (whose parent's threads are not there)."""

    def __init__(self, *, max_workers: int, thread_name_prefix: str = "") -> None:
        self._options = {"max_workers": max_workers, "thread_name_prefix": thread_name_prefix}
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        _thread_pools.add(self)

    def _forget(self) -> None:
        # In the child, right after the fork: no other thread runs, the lock may be held by
        # one that is gone.
        self._lock = threading.Lock()
        self._pool = None

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(**self._options)
            pool = self._pool
        return pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


_thread_pools: weakref.WeakSet[ProcessThreadPool] = weakref.WeakSet()


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


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """channels-redis's pub/sub layer: a push is one PUBLISH, and each process holds one
    subscribed connection that hands what arrives to its own sockets. (Its list-based layer
    costs four round trips a push and four more for each message a process takes off its
    list, one at a time: at 200 reports a second the portal's sockets fell minutes behind.)
    A socket that is not connected when a push is sent misses it (as with any push, a reload
    shows the state).

    Connections per event loop: one subscribed, one publishing (pushes wait their turn for
    it, under the layer's lock). ``group_send_many`` sends many pushes in one round trip
    (``portal.realtime.LoopBatch``); it uses the layer's shards as channels-redis 4.x
    keeps them."""

    async def groups_heard(self, groups: list[str]) -> set[str]:
        """Those of ``groups`` some socket listens to now, on any portal process (one
        ``PUBSUB NUMSUB`` a shard): a push nobody hears need not be rendered."""
        layer = self._get_layer()
        by_shard: dict[Any, dict[str, str]] = {}
        for group in groups:
            channel = layer._get_group_channel_name(group)
            by_shard.setdefault(layer._get_shard(channel), {})[channel] = group
        heard = set()
        for shard, channels in by_shard.items():
            async with shard._lock:
                shard._ensure_redis()
                counts = await shard._redis.pubsub_numsub(*channels)
            for channel, count in counts:
                name = channel.decode() if isinstance(channel, bytes) else channel
                if count and name in channels:
                    heard.add(channels[name])
        return heard

    async def group_send_many(self, messages: list[tuple[str, dict]]) -> None:
        layer = self._get_layer()
        by_shard: dict[Any, list[tuple[str, bytes]]] = {}
        for group, message in messages:
            channel = layer._get_group_channel_name(group)
            shard = layer._get_shard(channel)
            by_shard.setdefault(shard, []).append((channel, self.serialize(message)))
        for shard, items in by_shard.items():
            async with shard._lock:
                shard._ensure_redis()
                pipe = shard._redis.pipeline(transaction=False)
                for channel, data in items:
                    pipe.publish(channel, data)
                await pipe.execute()


# Per event loop, and gone with it (a new loop may reuse a dead one's id).
_loop_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def loop_redis() -> Any:
    """This event loop's Redis client (``portal.hotpath``), on a blocking pool of
    ``HAVEN_REDIS_POOL_SIZE`` connections like the cache's."""

    from django.conf import settings
    from redis import asyncio as aioredis

    loop = asyncio.get_running_loop()
    client = _loop_clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.HAVEN_REDIS_POOL_SIZE,
            timeout=settings.HAVEN_REDIS_POOL_TIMEOUT,
        )
        client = _loop_clients[loop] = aioredis.Redis(connection_pool=pool)
    return client


def cache_key(key: str) -> str:
    """``key`` as Django's cache names it in Redis (its default key function)."""
    from django.conf import settings

    cache = settings.CACHES["default"]
    return f"{cache.get('KEY_PREFIX', '')}:{cache.get('VERSION', 1)}:{key}"


def db_in_executor(fn: Any, executor: Any = None) -> Any:
    """``fn`` as a coroutine function that runs it on the event loop's executor (side by
    side, not queued on asgiref's one shared thread), or on ``executor`` (a
    ``ThreadPoolExecutor``), its database connection given back to the pool afterwards.
    One thread hop: channels' ``database_sync_to_async`` makes a second one just to close
    old connections first."""
    import functools

    from asgiref.sync import sync_to_async
    from django.db import close_old_connections

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(run, thread_sensitive=False, executor=executor)


class LoopBatches:
    """``await batches(item)``: the result for ``item`` of ``run(items)`` (a coroutine
    function whose list of results matches its items one for one), the items that are
    waiting on the event loop gathered into one call.

    A call leaves as soon as one of ``parallel`` calls is free: an item alone at a quiet
    time, every item that came meanwhile (at most ``max_items`` a call) at a busy one. No
    timer: nothing waits for a batch to fill. An exception of ``run`` is each of its
    items'. ``quiet`` lets other work give these batches the interpreter first."""

    def __init__(self, run: Any, max_items: int, parallel: int = 1) -> None:
        self.run = run
        self.max_items = max_items
        self.parallel = parallel
        self._loops: weakref.WeakKeyDictionary[Any, _LoopQueue] = weakref.WeakKeyDictionary()

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        queue = self._loops.get(loop)
        if queue is None:
            queue = self._loops[loop] = _LoopQueue()
        future = loop.create_future()
        queue.waiting.append((item, future))
        queue.idle.clear()
        if len(queue.tasks) < self.parallel:
            task = loop.create_task(self._drain(queue))
            queue.tasks.add(task)
            task.add_done_callback(functools.partial(self._never_ran, queue))
        return await future

    async def _drain(self, queue: _LoopQueue) -> None:
        try:
            await self._drain_waiting(queue)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling() and len(queue.tasks) == 1:
                # The last drain, cancelled (the loop shuts down): no call will run the
                # items still waiting, so their callers are cancelled rather than left
                # waiting for ever, and the loop counts as quiet again.
                self._cancel_waiting(queue)
            raise
        finally:
            # Gone from the running ones in the same step as its last look at the queue:
            # a done-callback ran a step later, and an item added in between (by a caller
            # its last batch had just answered) found it still counted, started no call,
            # and waited for ever.
            queue.tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            if not queue.tasks and not queue.waiting:
                queue.idle.set()

    def _never_ran(self, queue: _LoopQueue, task: Any) -> None:
        """A drain cancelled before its first step never reached its ``finally``: it is
        taken from the running ones here, and, when it was the last, the items waiting
        are cancelled as ``_drain`` cancels them. (Any other drain has left by then.)"""
        if task not in queue.tasks:
            return
        queue.tasks.discard(task)
        if not queue.tasks:
            self._cancel_waiting(queue)
            queue.idle.set()

    @staticmethod
    def _cancel_waiting(queue: _LoopQueue) -> None:
        for _, future in queue.waiting:
            future.cancel()
        queue.waiting.clear()

    async def quiet(self, longest: float) -> None:
        """Return once none of this loop's items is waiting or being run, or after
        ``longest`` seconds whatever comes: work that may wait (a render) lets a burst of
        these batches have the interpreter first, and is never held up for longer."""
        queue = self._loops.get(asyncio.get_running_loop())
        if queue is None or queue.idle.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.idle.wait(), longest)

    async def _drain_waiting(self, queue: _LoopQueue) -> None:
        while queue.waiting:
            batch = queue.waiting[: self.max_items]
            del queue.waiting[: self.max_items]
            try:
                results = await self.run([item for item, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class _LoopQueue:
    def __init__(self) -> None:
        self.waiting: list[tuple[Any, Any]] = []
        self.tasks: set[Any] = set()  # the drains under way (a reference keeps them from the GC)
        self.idle = asyncio.Event()  # set while nothing waits and no drain is under way
        self.idle.set()
