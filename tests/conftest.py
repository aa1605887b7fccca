"""Fixtures shared by the whole suite.

The autouse ``_isolated_home`` keeps tests away from the developer's real agent config and
environment; ``azurite`` and ``redis_url`` give the real servers (see tests/support/servers.py).
"""

from __future__ import annotations

import os

import pytest

from tests.support import servers

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_sessionstart(session):
    servers.check_database_url()


def pytest_collection_modifyitems(config, items):
    """Tests that touch the database or a browser also run in the real-servers pass."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("django_db") or fixtures & {
            "db",
            "transactional_db",
            "live_server",
        }:
            item.add_marker(pytest.mark.servers)
        if fixtures & {"page", "browser", "context"}:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.servers)


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hasher():
    """Hashing with PBKDF2 dominates tests that create users; MD5 is fine for them.

    Set on the settings object itself so live servers forked from this process use it too.
    """
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    # As root the agent's default config lives in /etc/haven-agent: never let a test write
    # the machine's real agent configuration.
    monkeypatch.setenv("HAVEN_AGENT_CONFIG_DIR", str(home / "haven-agent-config"))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> str:
    """A connection string for a running Azurite (started here unless one is configured)."""
    configured = os.environ.get("HAVEN_TEST_AZURE_CONNECTION_STRING")
    if configured:
        yield configured
        return
    server = servers.Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    try:
        yield server.connection_string
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _portal_storage_on_azurite(request):
    """In the servers pass, the portal's own storage account is Azurite."""
    if os.environ.get("HAVEN_TEST_STORAGE") != "azurite":
        yield
        return
    from django.conf import settings

    connection_string = request.getfixturevalue("azurite")
    previous = settings.AZURE_STORAGE_CONNECTION_STRING
    settings.AZURE_STORAGE_CONNECTION_STRING = connection_string
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = connection_string
    yield
    settings.AZURE_STORAGE_CONNECTION_STRING = previous


@pytest.fixture(scope="session")
def redis_url() -> str:
    return servers.redis_url()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {
        **browser_type_launch_args,
        "executable_path": "/usr/bin/chromium",
        "headless": True,
        "args": BROWSER_ARGS,
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1440, "height": 900}}
