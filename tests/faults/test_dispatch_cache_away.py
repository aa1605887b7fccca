"""The cache (Redis) is unreachable: the agent API still answers (the rate limiter counts in
the process instead, says so once in the log, and still limits), and so does registration.
Redis goes away through a loopback FaultProxy in front of the shared server."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import pytest

from agents import api_auth, api_views
from agents.api_auth import machine_token_issue
from tests.support import builders
from tests.support.faultproxy import FaultProxy

pytestmark = [pytest.mark.django_db]
FALLBACK = "rate limits are counted per process: the cache is unreachable"


@pytest.fixture
def cache_away(settings, redis_url, monkeypatch):
    """The portal's cache on Redis through a proxy, cut; the in-process counters fresh."""
    target = urlsplit(redis_url)
    monkeypatch.setattr(api_auth, "_local", api_auth._LocalCounter())
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        url = redis_url.replace(f":{target.port}", f":{proxy.port}", 1)
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": url,
                "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
            }
        }
        proxy.cut()
        yield proxy


def heartbeat(client, token: str):
    return client.post(
        "/api/agent/heartbeat/",
        data=b"{}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def test_the_agent_api_answers_with_the_cache_unreachable_and_logs_it_once(
    client, vault, cache_away, caplog
):
    token = machine_token_issue(machine=builders.make_machine(vault=vault))
    with caplog.at_level(logging.WARNING, logger="agents.api_auth"):
        answers = [heartbeat(client, token).status_code for _ in range(3)]
    assert answers == [200, 200, 200]
    assert caplog.text.count(FALLBACK) == 1


def test_with_the_cache_unreachable_a_machine_is_still_limited_in_the_process(
    client, vault, cache_away, monkeypatch
):
    monkeypatch.setattr(api_auth, "RATE_LIMIT_PER_MINUTE", 2)
    token = machine_token_issue(machine=builders.make_machine(vault=vault))
    answers = [heartbeat(client, token).status_code for _ in range(3)]
    assert answers[:2] == [200, 200] and answers[2] == 429


def test_registration_is_limited_not_refused_with_the_cache_unreachable(
    client, cache_away, monkeypatch
):
    monkeypatch.setattr(api_views, "REGISTER_LIMIT_PER_MINUTE", 1)
    register = [
        client.post("/api/agent/register/", data=b"{}", content_type="application/json")
        for _ in range(2)
    ]
    assert register[0].status_code == 400  # counted, then refused for its body, not a 500
    assert register[1].status_code == 429


def test_the_cache_coming_back_is_used_again(client, vault, cache_away, redis_url):
    import redis

    token = machine_token_issue(machine=builders.make_machine(vault=vault))
    assert heartbeat(client, token).status_code == 200
    cache_away.restore()
    assert heartbeat(client, token).status_code == 200
    machine_id = api_auth.MachineToken.objects.get().machine_id
    keys = redis.Redis.from_url(redis_url).keys(f"*agent-api-rate:{machine_id}:*")
    assert keys  # counted in the shared cache again
