"""The agent's Redis transport: kombu's, without Lua.

kombu's Redis transport emulates acknowledgements: a delivered message waits in the
machine's ``unacked`` hash until its task is acknowledged, and ``restore_visible`` puts
back the ones older than the visibility timeout (a worker that died). That sweep holds
the ``unacked_mutex`` key through redis-py's ``Lock``, whose release is a Lua script
(``EVALSHA``, ``SCRIPT LOAD``). A broker user allowed to run Lua can keep Redis busy for
everyone (a script cannot be interrupted while it writes), so the machines' users may not
(``agents/broker.py``), and this transport takes the mutex with ``SET NX PX`` and
releases it with a compare-and-delete under ``WATCH``/``MULTI``: plain commands. The mutex
only ever has one contender anyway: each agent is the only consumer of its queue.

Acknowledgements are unchanged (``acks_late`` keeps working): only the mutex differs.
The worker selects it with Celery's ``broker_transport`` (``worker.celery_config``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import WatchError

TRANSPORT = f"{__name__}:Transport"


@contextmanager
def mutex(client, name: str, expire: float) -> Iterator[None]:
    """Hold ``name`` for at most ``expire`` seconds, or raise ``MutexHeld``; no Lua."""
    token = secrets.token_hex(16).encode()
    if not client.set(name, token, nx=True, px=max(1, int(expire * 1000))):
        raise kombu_redis.MutexHeld()
    try:
        yield
    finally:
        with client.pipeline() as pipe:
            try:
                pipe.watch(name)
                if pipe.get(name) == token:  # not expired and taken by another meanwhile
                    pipe.multi()
                    pipe.delete(name)
                    pipe.execute()
            except WatchError:
                pass  # it changed hands after expiring: not ours to delete


class QoS(kombu_redis.QoS):
    calls = 0  # of restore_visible: only every ``interval``-th one sweeps (as kombu's)

    def restore_visible(self, start=0, num=10, interval=10):
        """kombu's sweep (``QoS.restore_visible``, kombu 5.7), with ``mutex`` above."""
        self.calls += 1
        if (self.calls - 1) % (interval or 1):
            return
        channel: Any = self.channel
        with channel.conn_or_acquire() as client:
            ceil = time() - self.visibility_timeout
            try:
                with mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    visible = client.zrange(
                        self.unacked_index_key, ceil, 0,
                        desc=True, byscore=True,
                        offset=num and start, num=num, withscores=True,
                    )  # fmt: skip
                    for tag, _score in visible or []:
                        self.restore_by_tag(tag, client)
            except kombu_redis.MutexHeld:
                pass


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
