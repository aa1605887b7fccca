"""Fixtures for the REST API's tests: a client that checks every answer against the
OpenAPI schema the portal serves, tokens for the cast, and a machine with a policy.

``api(user)`` is a client acting with a fresh personal access token of ``user`` (or none
for ``api(None)``); every response it receives, refusals included, is validated against
``/api/v1/schema/`` by openapi-core, so an endpoint that answers something its schema does
not describe fails the test that called it.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client
from openapi_core import OpenAPI
from openapi_core.contrib.django import DjangoOpenAPIRequest, DjangoOpenAPIResponse

from portal import tokens

_SPEC: dict = {}


def openapi() -> OpenAPI:
    """The schema as the portal serves it, parsed once per test run."""
    if "api" not in _SPEC:
        response = Client().get("/api/v1/schema/", HTTP_ACCEPT="application/json")
        assert response.status_code == 200
        _SPEC["api"] = OpenAPI.from_dict(json.loads(response.content))
    return _SPEC["api"]


class ApiClient:
    """Django's test client speaking JSON with a bearer token; checks each answer against
    the schema."""

    def __init__(self, token: str | None = None, *, client: Client | None = None):
        self.client = client or Client()
        self.token = token
        self.validated = 0

    def _headers(self) -> dict:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.token}"} if self.token else {}

    def request(self, method: str, path: str, body=None, **extra):
        call = getattr(self.client, method.lower())
        kwargs = {**self._headers(), **extra}
        if method.upper() in ("POST", "PUT", "PATCH"):
            kwargs.setdefault("content_type", "application/json")
            response = call(path, json.dumps(body if body is not None else {}), **kwargs)
        else:
            response = call(path, body or {}, **kwargs)
        self.check(response)
        return response

    def check(self, response) -> None:
        openapi().validate_response(
            DjangoOpenAPIRequest(response.wsgi_request), DjangoOpenAPIResponse(response)
        )
        self.validated += 1

    def get(self, path, params=None, **extra):
        return self.request("GET", path, params, **extra)

    def post(self, path, body=None, **extra):
        return self.request("POST", path, body, **extra)

    def put(self, path, body=None, **extra):
        return self.request("PUT", path, body, **extra)


@pytest.fixture(autouse=True)
def _api_env(settings, tmp_path):
    settings.HAVEN_API_RATE_PER_MINUTE = 100_000
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture
def api():
    def make(user, **client) -> ApiClient:
        if user is None:
            return ApiClient(None, **client)
        _, token = tokens.token_create(user=user, name=f"test-{user.username}", days=30)
        return ApiClient(token, **client)

    return make


def policy_spec(**changes) -> dict:
    from jobs import policy_rules

    spec = policy_rules.default_spec()
    spec["items"] = ["/srv/data"]
    spec.update(changes)
    return spec


def make_point(machine, snapshot_id: str = "snap-1", *, at=None):
    from django.utils import timezone

    from jobs.models import RecoveryPoint

    at = at or timezone.now()
    return RecoveryPoint.objects.create(
        machine=machine,
        vault=machine.vault,
        snapshot_id=snapshot_id,
        manifest_blob=f"manifests/{snapshot_id}",
        created_at=at,
        tagged_for=at,
        kind=RecoveryPoint.Kind.ADHOC,
        file_count=3,
        logical_bytes=3000,
    )


class World:
    """alice's Contoso: vault-one with machine web-01 (online, a policy, a recovery point,
    a queued restore job and an open alert) and the empty vault-two; charlie's Fabrikam
    with vault-far and machine far-01."""


@pytest.fixture
def world(alice, charlie, subscription, resource_group, vault):
    from django.utils import timezone

    from jobs import services as job_services
    from jobs.models import Alert, Job
    from portal.models import Subscription
    from tests.support import builders

    w = World()
    w.subscription, w.resource_group, w.vault = subscription, resource_group, vault
    w.machine = builders.make_machine(
        vault=vault, last_seen_at=timezone.now(), container="m-web-01"
    )
    w.policy = job_services.policy_save(machine=w.machine, spec=policy_spec(), user=alice)
    w.point = make_point(w.machine)
    w.job = Job.objects.create(
        vault=vault, machine=w.machine, operation=Job.Operation.RESTORE, created_by=alice
    )
    w.alert = Alert.objects.create(
        vault=vault,
        machine=w.machine,
        severity=Alert.Severity.CRITICAL,
        kind=Alert.Kind.BACKUP_FAILED,
        message="Backup of web-01 failed: the disk is full.",
    )
    w.empty_vault = builders.make_vault(resource_group=resource_group, name="vault-two")
    fabrikam = Subscription.objects.get(name="Fabrikam")
    far_group = builders.make_resource_group(subscription=fabrikam, name="far-rg")
    w.far_vault = builders.make_vault(resource_group=far_group, name="vault-far")
    w.far_machine = builders.make_machine(
        vault=w.far_vault, name="far-01", last_seen_at=timezone.now(), container="m-far-01"
    )
    make_point(w.far_machine, "far-snap")
    return w
