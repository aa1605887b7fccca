"""Agent API bodies the type fuzzer (test_agent_api_fuzz.py) found answering 500, one test
each. The machine sends them with its own valid token: a compromised or buggy agent."""

from __future__ import annotations

import json

import pytest

from agents.api_auth import machine_token_issue
from agents.runtime import protocol
from jobs import policy_rules, services
from jobs.models import Job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


@pytest.fixture
def job(machine, alice):
    spec = policy_rules.default_spec()
    spec["items"] = ["/srv/data"]
    services.policy_save(machine=machine, spec=spec, user=alice)
    return services.backup_start(machine=machine)


@pytest.fixture
def post(client, machine):
    token = machine_token_issue(machine=machine)

    def send(path: str, body: bytes):
        return client.post(
            f"/api/agent/{path}",
            body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {token}"},
        )

    return send


def _refused(answer) -> bool:
    return answer.status_code == 400 and isinstance(answer.json().get("error"), str)


def test_a_body_nested_past_the_recursion_limit_is_a_json_400(post, job):
    answer = post(f"jobs/{job.pk}/progress/", b"[" * 100_000 + b"]" * 100_000)
    assert _refused(answer)
    answer = post(f"jobs/{job.pk}/result/", b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    assert _refused(answer)
    assert Job.objects.get(pk=job.pk).status == job.status


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_or_infinity_in_a_progress_report_is_a_json_400(post, job, number):
    answer = post(f"jobs/{job.pk}/progress/", f'{{"stored_bytes": {number}}}'.encode())
    assert _refused(answer)
    assert Job.objects.get(pk=job.pk).status == job.status
    assert Job.objects.get(pk=job.pk).progress == job.progress


def test_a_nul_in_any_text_of_an_agent_body_is_a_json_400(post, job):
    """PostgreSQL stores no NUL in a JSON or text column: the progress' phase was a 500."""
    answer = post(f"jobs/{job.pk}/progress/", json.dumps({"phase": "a\x00b"}).encode())
    assert _refused(answer)
    body = {"status": "failed", "warnings": [{"path": "/srv/\x00", "reason": "x"}]}
    assert _refused(post(f"jobs/{job.pk}/result/", json.dumps(body).encode()))
    assert Job.objects.get(pk=job.pk).status == job.status


def test_a_progress_count_past_a_64_bit_column_is_capped_not_a_500(post, job):
    answer = post(f"jobs/{job.pk}/progress/", json.dumps({"stored_bytes": 10**30}).encode())
    assert answer.status_code == 200
    job.refresh_from_db()
    assert job.bytes_transferred == protocol.MAX_COUNT


def test_an_oversize_source_machine_in_a_grant_request_is_a_json_400(post, job):
    answer = post("recovery/grant/", json.dumps({"source_machine": "x" * 100_000}).encode())
    assert _refused(answer)
    assert _refused(post("recovery/grant/", json.dumps({"source_machine": ["web-01"]}).encode()))
