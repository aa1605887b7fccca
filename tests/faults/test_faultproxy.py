"""The fault proxy itself: it forwards, a cut breaks open connections and refuses new ones,
and a restore lets the same client connect again."""

from __future__ import annotations

import pytest
import redis

from tests.support.faultproxy import FaultProxy


def test_a_cut_breaks_a_live_redis_connection_and_a_restore_lets_it_reconnect(redis_url):
    real = redis.Redis.from_url(redis_url)
    host, port = (
        real.connection_pool.connection_kwargs["host"],
        real.connection_pool.connection_kwargs["port"],
    )
    with FaultProxy(host, port) as proxy:
        client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=2)
        assert client.ping()
        proxy.cut()
        with pytest.raises(redis.ConnectionError):
            client.ping()
        proxy.restore()
        assert client.ping()


def test_it_forwards_only_to_loopback():
    with pytest.raises(ValueError):
        FaultProxy("10.0.0.1", 6379)
