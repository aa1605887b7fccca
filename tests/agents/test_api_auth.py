"""The agent API's shared plumbing: one JSON body parser for every agent endpoint (machines,
jobs, recovery), each endpoint keeping its own size limit."""

from __future__ import annotations

import json

import pytest
from django.test import RequestFactory

from agents.api_auth import json_body, machine_token_issue
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
