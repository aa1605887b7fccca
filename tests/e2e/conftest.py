"""Fixtures for browser tests: a running ASGI portal with websockets, a signed-in page,
and screenshots.

``live_portal`` forks a Daphne server (channels' ``DaphneProcess``) that serves
``portal.asgi.application`` from the test database: a file-based SQLite database (see
``DATABASES["default"]["TEST"]`` in settings) or PostgreSQL when ``DATABASE_URL`` is set.
The test process shares no memory with it, so with the in-memory channel layer its live
pushes go through the portal's relay (``HAVEN_INTERNAL_URL`` points at the live server);
with ``REDIS_URL`` they go through Redis like any other process.

Tests with real agents use ``agent_portal`` and ``agent_machines`` instead
(tests/e2e/_agent_support.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

# Real agents on this machine (installed once, registered per test): see the module.
from tests.e2e._agent_support import (  # noqa: F401 - fixtures
    agent_machines,
    agent_portal,
    installed_agent,
    vault_owner,
)
from tests.support.screenshots import DESKTOP, copy_to_docs

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "var" / "screenshots"
PHONE = {"width": 390, "height": 844}


def _application():
    from portal.asgi import application

    return application


@pytest.fixture
def live_portal(transactional_db, settings, monkeypatch) -> str:
    """The base URL (``http://127.0.0.1:<port>``) of a live portal serving the test database."""
    from daphne.testing import DaphneProcess
    from django.db import connections

    from portal import realtime

    for connection in connections.all():
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            pytest.fail("live_portal needs a file-based test database (settings TEST NAME)")
    # The child must not inherit (and later close) this process's database connections.
    connections.close_all()
    server = DaphneProcess("127.0.0.1", _application)
    server.daemon = True
    server.start()
    if not server.ready.wait(30):
        error = None if server.errors.empty() else server.errors.get(False)[1]
        server.terminate()
        pytest.fail(f"the live portal did not start: {error or 'no error reported'}")
    url = f"http://127.0.0.1:{server.port.value}"
    # Pushes from this process reach the server's sockets through its relay endpoint.
    settings.HAVEN_INTERNAL_URL = url
    monkeypatch.setattr(realtime, "serving_pid", None)
    try:
        yield url
    finally:
        server.terminate()
        server.join(10)
        if server.is_alive():
            server.kill()
            server.join(5)


@dataclass
class PortalOwner:
    user: object
    password: str
    subscription: object
    resource_group: object


def make_user(username: str, *, password: str | None = None, **fields):
    from portal.models import User

    password = password or secrets.token_urlsafe(12)
    user = User.objects.create_user(username=username, password=password, **fields)
    user.raw_password = password
    return user


@pytest.fixture
def portal_owner(live_portal) -> PortalOwner:
    """alice, Owner of subscription "Contoso Production" with resource group rg-backup-west."""
    from portal import services

    user = make_user("alice", first_name="Alice", last_name="Owner", email="alice@example.com")
    subscription = services.subscription_create(name="Contoso Production", owner=user)
    group = services.resource_group_create(
        subscription=subscription, name="rg-backup-west", location="West Europe"
    )
    user.notifications.all().delete()
    return PortalOwner(
        user=user, password=user.raw_password, subscription=subscription, resource_group=group
    )


def sign_in_with_cookie(page, base_url: str, user) -> None:
    """Sign ``user`` in by planting a session cookie (fast; the sign-in form has its own test)."""
    from django.test import Client

    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    page.context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": base_url}]
    )


@pytest.fixture
def signed_in_page(page, live_portal, portal_owner):
    """A Playwright page at Home, signed in as ``portal_owner`` (an Owner with a subscription
    and a resource group), with the live socket connected."""
    from playwright.sync_api import expect

    page.set_default_timeout(10_000)
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    page.goto(live_portal + "/")
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    return page


@pytest.fixture
def screenshot(page):
    """``screenshot("home-desktop")`` saves the page to var/screenshots/home-desktop.png.

    Pass ``viewport="phone"`` (390×844) or ``"desktop"`` (1440×900; 1280×800 when taking
    the docs pictures) to resize first, and ``target=`` another page or a locator to capture
    that instead."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(name: str, *, target=None, viewport: str | None = None, full_page: bool = False):
        if viewport:
            page.set_viewport_size(PHONE if viewport == "phone" else DESKTOP)
        path = SCREENSHOTS / f"{name}.png"
        subject = target or page
        if full_page and target is None:
            subject.screenshot(path=str(path), full_page=True)
        else:
            subject.screenshot(path=str(path))
        copy_to_docs(name, path)
        return path

    return take
