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
