"""Every agent API body, fuzzed by type, as the machine itself (a valid token).

The endpoints come from the URL resolver under ``/api/agent/``; each has a valid example body
below (the test fails when a new endpoint has none). Hypothesis replaces one field at a time
(or adds one) with a wrong type, a huge or negative number, NaN, a list where text goes,
nested junk, NUL-bearing or oversize text, or replaces the whole body with invalid JSON,
non-UTF-8 bytes, another JSON type or deep nesting. The answer is never 5xx; a 4xx is JSON
with an ``error`` code and changes nothing the portal keeps about the machine.

Each example runs in a savepoint that is rolled back: an accepted body (``unregister``
is one) does not spoil the next. The per-machine and per-address rate limits are raised for
the run; they are tests/agents' business.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from django.core.cache import cache
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agents.api_auth import machine_token_issue
from agents.models import Machine, MachineToken
from jobs import policy_rules, services
from jobs.models import BackupPolicy, Job, RecoveryPoint
from tests.jobs.conftest import stored_point
from tests.support import builders
from vaults import storage

pytestmark = pytest.mark.django_db

EXAMPLES_PER_ENDPOINT = 20
PREFIX = "api/agent/"


def _agent_routes() -> list[str]:
    def walk(patterns, prefix):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith(PREFIX):
                yield route.removeprefix(PREFIX)

    return sorted(set(walk(get_resolver().url_patterns, "")))


ROUTES = _agent_routes()


def _examples(cast) -> dict[str, tuple[str, object]]:
    """route -> (method, a body the endpoint accepts)."""
    machine = cast["machine"]
    return {
        "identity/": ("GET", None),
        "register/": (
            "POST",
            {
                "credentials": "not a credentials file",
                "machine_name": "web-02",
                "hostname": "web-02",
                "os_name": "Linux",
                "agent_version": "1.0.0",
                "time_zone": "UTC",
                "replace": False,
                "replaces_machine_id": "",
            },
        ),
        "heartbeat/": (
            "POST",
            {
                "vault_id": str(machine.vault_id),
                "agent_version": "1.0.0",
                "hostname": "web-01",
                "os_name": "Linux",
                "check": False,
            },
        ),
        "grant/": ("POST", {"vault_id": str(machine.vault_id)}),
        "unregister/": ("POST", {"vault_id": str(machine.vault_id), "rollback": False}),
        "jobs/policy/": ("GET", None),
        "jobs/policy/applied/": (
            "POST",
            {"version": 1, "spec_hash": cast["policy"].spec_hash, "error": ""},
        ),
        "jobs/<uuid:job_id>/": ("GET", None),
        "jobs/<uuid:job_id>/start/": ("POST", {}),
        "jobs/<uuid:job_id>/progress/": (
            "POST",
            {
                "type": "progress",
                "phase": "backing_up",
                "files_done": 1,
                "files_total": 2,
                "bytes_done": 10,
                "bytes_total": 20,
                "new_bytes": 10,
                "stored_bytes": 5,
                "rate_bps": 1.5,
                "eta_s": 3,
                "current": "/srv/data/a",
                "elapsed_s": 1,
            },
        ),
        "jobs/<uuid:job_id>/result/": (
            "POST",
            {
                "status": "completed",
                "message": "",
                "warnings": [{"path": "/srv/data/b", "reason": "vanished"}],
                "warning_count": 1,
                "stats": {"files": 1, "logical_bytes": 10, "new_bytes": 10, "added_bytes": 5},
                "recovery_point_id": "ef" * 16,
                "manifest_blob": "snapshots/" + "ef" * 16,
                "pack_ids": ["aa" * 16],
            },
        ),
        # (the cast's backup is running: the example is answered 409 backup_running)
        "jobs/backup/": ("POST", {"retain_until": "2099-12-31"}),
        "jobs/passphrase/": ("POST", {"security_pin": "12345678"}),
        "jobs/passphrase/<uuid:change_id>/complete/": ("POST", {"key": "ab" * 16}),
        "recovery/grant/": ("POST", {"source_machine": machine.name}),
        "recovery/answers/<str:request_id>/": (
            "POST",
            {"ok": True, "result": {"entries": [{"name": "a", "type": "file", "size": 1}]}},
        ),
        "recovery/downloads/<uuid:job_id>/": ("RAW", b"\x1f\x8b" + b"\x00" * 30),
    }


def _url(route: str, cast) -> str:
    values = {
        "job_id": str(cast["job"].pk),
        "request_id": cast["request_id"],
        "change_id": "0f0e0d0c-0b0a-4908-8706-050403020100",  # no such change: refused
    }
    return "/" + PREFIX + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], route)


# -- hostile values -------------------------------------------------------------------------
NAN = object()  # sent as a bare NaN / Infinity token, which Python's json accepts
WRONG_VALUES = (
    None,
    True,
    0,
    -1,
    -(2**63) - 1,
    2**63,
    10**30,
    1.5,
    -0.0,
    1e308,
    "",
    "junk",
    "²",
    "\x00",
    "a\x00b",
    "x" * 100_000,
    [],
    ["a", 1, None],
    {},
    {"nested": {"deeper": [1, {"x": None}]}},
    NAN,
)
WRONG = st.sampled_from(WRONG_VALUES)
JUNK_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
RAW_BODY_LIST = (
    b"",
    b"{",
    b"not json",
    b"\xff\xfe\xfd",
    b'{"a": "\xff"}',
    b"[]",
    b"1",
    b'"text"',
    b"null",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"NaN",
    b'{"version": Infinity}',
    b'{"version": 1e999, "stored_bytes": -1e999, "files_done": 1e999}',
    b'{"status": "completed", "stats": {"files": 1e999}}',
)
RAW_BODIES = st.sampled_from(RAW_BODY_LIST)


def _encode(body) -> bytes:
    text = json.dumps(body, default=str).replace('"__NAN__"', "NaN")
    return text.encode()


def _replace(example: dict, path: tuple[str, ...], value) -> dict:
    """The example with the field at ``path`` (one or two keys deep) set to ``value``."""
    body = json.loads(json.dumps(example))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "__NAN__" if value is NAN else value
    return body


def _paths(example: dict) -> list[tuple[str, ...]]:
    """Every field of the example, the fields of its objects (``stats.files``), and one
    field it does not have."""
    paths: list[tuple[str, ...]] = [(key,) for key in sorted(example)] + [("extra",)]
    for key, value in sorted(example.items()):
        if isinstance(value, dict):
            paths += [(key, inner) for inner in sorted(value)] + [(key, "extra")]
    return paths


# -- what must not change ---------------------------------------------------------------------
def _state(machine: Machine) -> dict:
    return {
        "machines": list(
            Machine.objects.order_by("pk").values_list(
                "pk", "name", "hostname", "os_name", "agent_version", "unregistered_at"
            )
        ),
        "tokens": list(MachineToken.objects.order_by("pk").values_list("pk", "revoked_at")),
        "jobs": list(
            Job.objects.filter(machine=machine)
            .order_by("pk")
            .values_list("pk", "status", "progress", "bytes_transferred", "error", "warning_count")
        ),
        "policy": list(
            BackupPolicy.objects.filter(machine=machine).values_list(
                "applied_version", "applied_hash", "apply_error", "applied_at"
            )
        ),
        "points": RecoveryPoint.objects.count(),
        "answer": cache.get("recovery:answer:fuzz-request-000000000"),
    }


@pytest.fixture
def cast(alice, vault, monkeypatch):
    monkeypatch.setattr(services, "_send_to_machine", lambda machine, task, **kw: None)
    monkeypatch.setattr(services, "_enqueue", lambda name, *args: None)
    monkeypatch.setattr("portal.realtime.publish_now", lambda group, html: None)
    monkeypatch.setattr("agents.api_auth.RATE_LIMIT_PER_MINUTE", 10**9)
    monkeypatch.setattr("agents.api_views.REGISTER_LIMIT_PER_MINUTE", 10**9)
    container = f"fuzz-{uuid.uuid4().hex[:12]}"
    storage.primary_account().create_container(container)
    machine = builders.make_machine(vault=vault, name="web-01", container=container)
    spec = policy_rules.default_spec()
    spec["items"] = ["/srv/data"]
    policy = services.policy_save(machine=machine, spec=spec, user=alice)
    job = services.backup_start(machine=machine)
    # The result's example names a point whose manifest and pack are really stored, so the
    # example is accepted and only the fuzzed fields are refused.
    stored_point(machine, "ef" * 16, ["aa" * 16])
    cache.set("recovery:req:fuzz-request-000000000", {"target": str(machine.pk)}, 600)
    cache.delete("recovery:answer:fuzz-request-000000000")
    token = machine_token_issue(machine=machine)
    yield {
        "machine": machine,
        "policy": policy,
        "job": job,
        "token": token,
        "request_id": "fuzz-request-000000000",
    }
    cache.delete_many(
        ["recovery:req:fuzz-request-000000000", "recovery:answer:fuzz-request-000000000"]
    )
    # The registrations sent here count against the test client's address in the shared
    # cache; later tests that register must not find the limit reached.
    window = int(time.time() // 60)
    cache.delete_many([f"agent-register-rate:127.0.0.1:{w}" for w in (window - 1, window)])
    storage.primary_account().delete_container(container)


def test_every_agent_endpoint_has_an_example_body(cast):
    assert set(ROUTES) == set(_examples(cast)), "give the new endpoint an example body here"


@pytest.mark.parametrize("route", ROUTES)
def test_a_hostile_agent_body_is_a_json_4xx_and_changes_nothing(route, cast):
    method, example = _examples(cast)[route]
    url = _url(route, cast)
    auth = {"Authorization": f"Bearer {cast['token']}"}

    def send(body: bytes | None, *, raw: bool = False):
        client = Client(raise_request_exception=False)  # a 500 is an answer to report
        if method == "GET":
            return client.get(url, headers=auth)
        content_type = "application/gzip" if raw else "application/json"
        return client.post(url, body or b"", content_type=content_type, headers=auth)

    # The example itself is accepted: the fuzzing below starts from a body that works.
    with transaction.atomic():
        valid = send(example if method == "RAW" else _encode(example), raw=method == "RAW")
        transaction.set_rollback(True)
    assert valid.status_code < 500, valid.content[:300]

    def check(body):
        with transaction.atomic():
            before = _state(cast["machine"])
            answer = send(body, raw=method == "RAW")
            # after a 500 the savepoint may be unusable: only its status is reported
            after = _state(cast["machine"]) if answer.status_code < 500 else before
            transaction.set_rollback(True)
        cache.delete("recovery:answer:fuzz-request-000000000")
        seen = f"{route} with {body!r:.200} -> {answer.status_code} {answer.content[:100]!r}"
        assert answer.status_code < 500, seen
        if answer.status_code >= 400:
            assert answer["Content-Type"] == "application/json", seen
            assert isinstance(answer.json().get("error"), str), seen
            if answer.json()["error"] == "point_refused":
                # A well-formed result whose point fails the portal's checks ends the job
                # Failed with the reason (the person sees why); nothing else changes.
                assert after["points"] == before["points"], seen
                assert {k: v for k, v in after.items() if k != "jobs"} == {
                    k: v for k, v in before.items() if k != "jobs"
                }, f"refused yet changed: {seen}"
                return
            assert after == before, f"refused yet changed: {seen}"

    if method == "GET":
        check(None)
        return

    # First every field with every wrong value, one at a time, and every malformed body: a
    # sweep, so that stored_bytes=10**30 is sent whatever hypothesis draws.
    if method == "RAW":
        sweep = [*RAW_BODY_LIST, b"x" * 1024]
        bodies = st.binary(max_size=64) | RAW_BODIES
    else:
        sweep = [
            _encode(_replace(example, path, value))
            for path in _paths(example)
            for value in WRONG_VALUES
        ] + list(RAW_BODY_LIST)
        # Then hypothesis: nested junk of any shape in any field.
        bodies = st.builds(
            _replace, st.just(example), st.sampled_from(_paths(example)), JUNK_VALUE
        ).map(_encode)
    failures = []
    for body in sweep:
        try:
            check(body)
        except AssertionError as exc:  # gathered, so one run names every failing field
            failures.append(str(exc).splitlines()[0])
    assert not failures, "\n".join(failures[:30])

    @settings(
        max_examples=EXAMPLES_PER_ENDPOINT,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),  # the assertion names the body
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(body=bodies)
    def fuzz(body):
        check(body)

    fuzz()
