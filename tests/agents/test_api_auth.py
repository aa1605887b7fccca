"""The agent API's shared plumbing: one JSON body parser for every agent endpoint (machines,
jobs, recovery), each endpoint keeping its own size limit; the per-machine and per-address
rate limits, which say when to come back."""

from __future__ import annotations

import json
import time

import pytest
from django.core.cache import cache
from django.test import Client, RequestFactory

from agents import api_auth, api_views
from agents.api_auth import json_body, machine_token_issue
from portal.pools import RedisPoolTimeout
from tests.support import builders

pytestmark = [pytest.mark.django_db]

ENDPOINTS = [
    "/api/agent/heartbeat/",
    "/api/agent/jobs/policy/applied/",
    "/api/agent/recovery/grant/",
]


@pytest.fixture
def token(vault) -> str:
    return machine_token_issue(machine=builders.make_machine(vault=vault))


def post(client, path: str, body: bytes, token: str):
    return client.post(
        path, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def parse(body: bytes, max_bytes: int = 100):
    request = RequestFactory().post("/", data=body, content_type="application/json")
    return json_body(request, max_bytes=max_bytes)


def test_json_body_reads_objects_and_refuses_the_rest():
    assert parse(b"") == {}
    assert parse(b'{"check": true}') == {"check": True}
    assert parse(b"[1, 2]") is None
    assert parse(b"{not json") is None
    assert parse(b"\xff\xfe{}") is None
    assert parse(b'{"pad": "' + b"x" * 200 + b'"}') is None
    assert parse(b'{"pad": "' + b"x" * 200 + b'"}', max_bytes=1000) == {"pad": "x" * 200}


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("body", [b"[1]", b"{not json", b"\xff\xfe{}"])
def test_every_agent_endpoint_answers_a_bad_body_with_a_400(client, token, path, body):
    answer = post(client, path, body, token)
    assert answer.status_code == 400 and answer.json()["error"] in ("malformed", "bad_request")


def test_each_endpoint_keeps_its_own_size_limit(client, token):
    big = json.dumps({"pad": "x" * 300 * 1024}).encode()  # over 256 KiB, under 2 MiB
    assert post(client, "/api/agent/heartbeat/", big, token).status_code == 400
    # The jobs API takes up to 2 MiB: the body is read, and the missing policy is named.
    answer = post(client, "/api/agent/jobs/policy/applied/", big, token)
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


def test_a_machine_over_its_limit_is_told_when_the_next_minute_starts(client, token, monkeypatch):
    monkeypatch.setattr(api_auth, "RATE_LIMIT_PER_MINUTE", 1)
    # 37.4 s into a minute: the counters start again in 22.6 s
    monkeypatch.setattr(time, "time", lambda: 60 * 28_333_333 + 37.4)
    answers = [post(client, "/api/agent/heartbeat/", b"{}", token) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429]
    assert answers[1]["Retry-After"] == "23"
    assert answers[1].json()["error"] == "rate_limited"


def test_an_address_over_its_registration_limit_is_told_when_to_come_back(client, monkeypatch):
    monkeypatch.setattr(api_views, "REGISTER_LIMIT_PER_MINUTE", 0)
    monkeypatch.setattr(time, "time", lambda: 60 * 28_333_333 + 59.5)
    answer = client.post("/api/agent/register/", data=b"{}", content_type="application/json")
    assert answer.status_code == 429
    assert answer["Retry-After"] == "1"


def test_a_cache_pool_with_no_connection_free_is_busy_not_a_reason_to_count_locally(
    token, monkeypatch, settings
):
    """A pool timeout means this process is busy (the cache is there): the request is
    answered 503 with Retry-After, like a database pool timeout, instead of being let
    through on the per-process fallback meant for a cache that is away."""
    settings.HAVEN_PORTAL_RETRY_AFTER = 2

    def no_connection_free(*args, **kwargs):
        raise RedisPoolTimeout("no Redis connection free within 0.5 s")

    monkeypatch.setattr(cache, "add", no_connection_free)
    answer = post(Client(raise_request_exception=False), "/api/agent/heartbeat/", b"{}", token)
    assert answer.status_code == 503
    assert answer["Retry-After"] == "2"
    assert answer.json()["error"] == "busy"
