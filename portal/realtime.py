"""Pushing HTML fragments to browsers over the Channels layer, from any process.

With Redis (``REDIS_URL``) every process reaches the sockets through channels-redis. With
the embedded in-memory layer only the ASGI server's own process can, so other processes
(the portal worker, beat) relay through the server's internal endpoint, signed with a key
derived from SECRET_KEY. Publishing is a push only: the database stays the truth, and a
page reload shows the same state.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import urllib.request
import weakref
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)

RELAY_PATH = "/_internal/realtime/"
# Set by the ASGI application on its first request: the pid that serves the sockets.
serving_pid: int | None = None


def group_for_user(user_id) -> str:
    return f"user.{user_id}"


def group_for_fleet(subscription_id) -> str:
    """The Backup center's group for one subscription (``?watch=fleet:<id>``)."""
    return f"fleet.{subscription_id}"


# What the Backup center hears: only that something it shows may have changed. Its rows
# and counts are one filtered, aggregated query over every vault the reader can see, so the
# page fetches its results again with its own filters (static/js/fleet.js), rather than
# each change rendering a fragment for every filter of every reader.
FLEET_CHANGED = '<div id="fleet-changed" hx-swap-oob="true" hidden></div>'


def fleet_changed(subscription_id) -> None:
    """Tell the open Backup centers of the subscription that a machine's state, a job or
    an alert there changed (after commit)."""
    publish(group_for_fleet(subscription_id), FLEET_CHANGED)


def publish(group: str, html: str) -> None:
    """Send an htmx out-of-band fragment to every socket in ``group`` after commit (inside
    ``collected``: add it to the collection instead)."""
    pushes = getattr(_collecting, "pushes", None)
    if pushes is not None:
        transaction.on_commit(lambda: pushes.append((group, html)))
        return
    transaction.on_commit(lambda: publish_now(group, html))


_collecting = threading.local()


@contextlib.contextmanager
def collected() -> Iterator[list[tuple[str, str]]]:
    """The ``(group, html)`` this thread publishes inside the block, collected (each after
    its commit, as ``publish`` sends it) for a caller on the server's event loop to send in
    one round trip (``PubSubChannelLayer.group_send_many``), in their order."""
    pushes: list[tuple[str, str]] = []
    _collecting.pushes = pushes
    try:
        yield pushes
    finally:
        _collecting.pushes = None


def publish_now(group: str, html: str) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    if isinstance(layer, InMemoryChannelLayer) and serving_pid != os.getpid():
        _relay(group, html)
        return
    message = fragment_message(group, html)
    if isinstance(layer, InMemoryChannelLayer):
        try:
            _group_send(layer, group, message)
        except Exception:  # a push is best effort: the page shows the truth on reload
            log.warning("could not push to %s", group, exc_info=True)
        return
    sent = _sender().send(layer, group, message)
    # Wait for it (briefly): a busy portal then slows its callers instead of letting pushes
    # queue up behind them, and the sending thread gets the interpreter while they wait.
    with contextlib.suppress(concurrent.futures.TimeoutError):
        sent.result(timeout=PUSH_WAIT_SECONDS)


def fragment_message(group: str, html: str) -> dict:
    # The group rides along so the consumer can check the user may still hear it.
    return {"type": "fragment", "html": html, "group": group}


# How long pushes made on the server's event loop wait to leave together (LoopBatch).
BATCH_SECONDS = 0.2


class LoopBatch:
    """Running jobs' steady progress, pushed from the server's event loop (``portal.hotpath``)
    in batches: every ``BATCH_SECONDS`` the cache writes leave in one Redis round trip and
    the pushes in another (``PubSubChannelLayer.group_send_many``), and a group that has
    several jobs' reports waiting gets them as one message,
    ``{"job_progress_batch": [report, ...]}`` in the order they came (each as
    ``jobs.services.live.job_progress_publish`` sends one; static/js/jobs.js applies both).
    A push is best effort, as above: a failed batch is logged and the pages show the state
    on reload."""

    def __init__(self) -> None:
        self.pushes: dict[str, list[dict]] = {}  # group -> reports
        self.writes: dict[str, tuple[bytes, int]] = {}  # Redis key -> (value, seconds)
        self.scheduled = False

    def add(self, *, groups: list[str], report: dict, key: str, value: bytes, ttl: int) -> None:
        for group in groups:
            self.pushes.setdefault(group, []).append(report)
        self.writes[key] = (value, ttl)
        if not self.scheduled:
            self.scheduled = True
            loop = asyncio.get_running_loop()
            loop.call_later(BATCH_SECONDS, lambda: loop.create_task(self.flush()))

    async def flush(self) -> None:
        from portal.pools import loop_redis

        pushes, writes = self.pushes, self.writes
        self.pushes, self.writes, self.scheduled = {}, {}, False
        try:
            if writes:
                pipe = loop_redis().pipeline(transaction=False)
                for key, (value, ttl) in writes.items():
                    pipe.set(key, value, ex=ttl)
                await pipe.execute()
            messages = []
            for group, batch in pushes.items():
                html = json.dumps(batch[0] if len(batch) == 1 else {"job_progress_batch": batch})
                messages.append((group, fragment_message(group, html)))
            if messages:
                await get_channel_layer().group_send_many(messages)  # type: ignore[union-attr]
        except Exception:  # best effort: the page shows the truth on reload
            log.warning("could not push %d groups' progress", len(pushes), exc_info=True)


_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBatch] = (
    weakref.WeakKeyDictionary()
)


def loop_batch() -> LoopBatch:
    """This event loop's batch."""
    key = asyncio.get_running_loop()
    batch = _batches.get(key)
    if batch is None:
        batch = _batches[key] = LoopBatch()
    return batch


# How long a request waits for its push to leave before it answers anyway.
PUSH_WAIT_SECONDS = 2.0


class _Sender:
    """Sends to a shared layer (Redis) from one long-lived event loop per process, so a
    push costs the caller a queue put, not a thread and a loop of its own. Messages of one
    group keep their order (one lane per group); lanes let groups go side by side."""

    LANES = 16

    def __init__(self):
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.pending = 0
        self.idle = threading.Condition()
        thread = threading.Thread(target=self._run, name="haven-realtime", daemon=True)
        thread.start()
        self.ready.wait(5)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.lanes = [asyncio.Queue() for _ in range(self.LANES)]
        for lane in self.lanes:
            self.loop.create_task(self._drain(lane))
        self.ready.set()
        self.loop.run_forever()

    async def _drain(self, lane: asyncio.Queue):
        while True:
            layer, group, message, sent = await lane.get()
            try:
                await layer.group_send(group, message)
            except Exception:  # best effort: the page shows the truth on reload
                log.warning("could not push to %s", group, exc_info=True)
            finally:
                sent.set_result(None)
                with self.idle:
                    self.pending -= 1
                    self.idle.notify_all()

    def send(self, layer, group: str, message: dict) -> concurrent.futures.Future:
        """Queue the push; the future is done once it has left (or failed, logged)."""
        with self.idle:
            self.pending += 1
        sent: concurrent.futures.Future = concurrent.futures.Future()
        lane = self.lanes[zlib.crc32(group.encode()) % self.LANES]
        self.loop.call_soon_threadsafe(lane.put_nowait, (layer, group, message, sent))
        return sent

    def flush(self, timeout: float) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: self.pending == 0, timeout)


_sender_instance: _Sender | None = None
_sender_lock = threading.Lock()


def _sender() -> _Sender:
    global _sender_instance
    with _sender_lock:
        if _sender_instance is None or _sender_instance.pid != os.getpid():
            _sender_instance = _Sender()  # first push, or a forked worker process
        return _sender_instance


def flush(timeout: float = 5.0) -> bool:
    """Wait until the pushes queued by this process have left; whether they all did."""
    return _sender_instance is None or _sender_instance.flush(timeout)


def tell_user_sockets(user_id, message: dict) -> None:
    """Send a control message (``portal.consumers``) to every socket of the user, after
    commit. Only where the sockets are reachable: through Redis, or in the process that
    serves them; elsewhere each socket's own re-check on its next push does the work."""

    def send():
        layer = get_channel_layer()
        if layer is None or (
            isinstance(layer, InMemoryChannelLayer) and serving_pid != os.getpid()
        ):
            return
        if not isinstance(layer, InMemoryChannelLayer):
            _sender().send(layer, group_for_user(user_id), message)  # not waited for
            return
        try:
            _group_send(layer, group_for_user(user_id), message)
        except Exception:
            log.warning("could not tell the sockets of user %s", user_id, exc_info=True)

    transaction.on_commit(send)


def _group_send(layer, group: str, message: dict) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        async_to_sync(layer.group_send)(group, message)
        return
    # Synchronous code on a thread that runs an event loop (a sync Playwright test, for
    # one) cannot use async_to_sync there: send from a short-lived helper thread.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(async_to_sync(layer.group_send), group, message).result(timeout=10)


def relay_signature(body: bytes) -> str:
    key = hashlib.sha256(b"haven-realtime-relay:" + settings.SECRET_KEY.encode()).digest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _relay(group: str, html: str) -> None:
    body = json.dumps({"group": group, "html": html}).encode()
    request = urllib.request.Request(
        settings.HAVEN_INTERNAL_URL + RELAY_PATH,
        data=body,
        headers={"Content-Type": "application/json", "X-Haven-Signature": relay_signature(body)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            response.read()
    except OSError as exc:
        log.info(
            "portal not reachable for a live update to %s (%s); pages show it on reload", group, exc
        )
