"""Fixtures shared by the whole suite.

The autouse ``_isolated_home`` keeps tests away from the developer's real agent config and
environment; ``azurite`` and ``redis_url`` give the real servers (see tests/support/servers.py).

The cast every app's tests share (built with tests/support/builders.py): ``alice`` owns
subscription "Contoso" (``subscription``) with resource group "backup-rg"
(``resource_group``) and the ready vault "vault-one" (``vault``); ``bob`` is a member whose
role a test picks with ``member(role)``; ``charlie`` owns subscription "Fabrikam" and
belongs to nothing of alice's. An app's conftest may narrow a fixture for its tests (the
portal's charlie owns nothing at all) but does not copy it.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from django.db import connections

from tests.support import builders, screenshots, servers, workers

if TYPE_CHECKING:
    from portal.models import ResourceGroup, Subscription, User
    from vaults.models import Vault

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


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist (``-n 2``): before a worker process sets up Django, give it its own data
    directory and Redis database (``servers.worker_environment``). The worker is a fresh
    interpreter started from this one; this runs in it before pytest does."""
    index = int(node.gateway.id.removeprefix("gw"))
    channel = node.gateway.remote_exec("import os\nos.environ.update(channel.receive())")
    channel.send(servers.worker_environment(index))
    channel.waitclose(60)


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


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's, and before it drops a PostgreSQL test database, the sessions still
    open on it are ended. Django closes only this thread's connection and its pool's idle
    ones; a pooled connection that another thread of a test took and never gave back (its
    wrapper waiting in a reference cycle for the collector) held a session open, and DROP
    DATABASE refused: "is being accessed by other users", the database left behind."""
    yield
    gc.collect()  # the connections of threads that ended are closed as they should be
    with django_db_blocker.unblock():
        for conn in connections.all():
            if conn.vendor != "postgresql":
                continue
            conn.close()
            conn.close_pool()
            with conn._nodb_cursor() as cursor:  # the "postgres" database, as Django's DROP
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    [conn.settings_dict["NAME"]],
                )


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


@pytest.fixture(autouse=True)
def _alone_when_marked(request, tmp_path_factory):
    """A test marked ``alone`` (its timing is its assertion) runs with no other test beside
    it: under pytest-xdist the other workers wait for it (``workers.turn``)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    with workers.turn(workers.run_dir(tmp_path_factory), alone=alone):
        yield


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


@pytest.fixture(scope="session")
def azurite_secondary(tmp_path_factory) -> str:
    """A second Azurite, for a geo-redundant vault's secondary account (its own server, so
    a test can stop one side)."""
    configured = os.environ.get("HAVEN_TEST_AZURE_SECONDARY_CONNECTION_STRING")
    if configured:
        yield configured
        return
    server = servers.Azurite(tmp_path_factory.mktemp("azurite-secondary"))
    server.start()
    try:
        yield server.connection_string
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def _portal_storage_on_azurite(request):
    """In the servers pass, the portal's own storage account is Azurite, and the secondary
    account of geo-redundant vaults a second Azurite."""
    if os.environ.get("HAVEN_TEST_STORAGE") != "azurite":
        yield
        return
    from django.conf import settings

    connection_string = request.getfixturevalue("azurite")
    secondary = request.getfixturevalue("azurite_secondary")
    previous = (
        settings.AZURE_STORAGE_CONNECTION_STRING,
        settings.SECONDARY_STORAGE_CONNECTION_STRING,
    )
    settings.AZURE_STORAGE_CONNECTION_STRING = connection_string
    settings.SECONDARY_STORAGE_CONNECTION_STRING = secondary
    os.environ["AZURE_STORAGE_CONNECTION_STRING"] = connection_string
    os.environ["HAVEN_SECONDARY_STORAGE_CONNECTION_STRING"] = secondary
    yield
    settings.AZURE_STORAGE_CONNECTION_STRING, settings.SECONDARY_STORAGE_CONNECTION_STRING = (
        previous
    )


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
    return {**browser_context_args, "viewport": screenshots.DESKTOP}


@pytest.fixture
def alice(db) -> User:
    """The owner of subscription "Contoso"."""
    return builders.make_user(
        username="alice", email="alice@example.test", first_name="Alice", last_name="Owner"
    )


@pytest.fixture
def bob(db) -> User:
    """A user to be given a role on Contoso (``member``); none until then."""
    return builders.make_user(username="bob", email="bob@example.test")


@pytest.fixture
def charlie(db) -> User:
    """The outsider: owner of his own subscription "Fabrikam", nothing of alice's."""
    return builders.make_outsider(username="charlie")


@pytest.fixture
def subscription(alice) -> Subscription:
    """Contoso, recorded only (no "Subscription created" notification)."""
    return builders.make_subscription(owner=alice)


@pytest.fixture
def member(bob, subscription) -> Callable[[str], User]:
    """``member(role)`` gives bob that role on Contoso and returns bob."""
    return builders.role_giver(user=bob, subscription=subscription)


@pytest.fixture
def resource_group(subscription) -> ResourceGroup:
    return builders.make_resource_group(subscription=subscription)


@pytest.fixture
def vault(resource_group) -> Vault:
    """The ready vault "vault-one" in backup-rg, recorded only: nothing is deployed."""
    return builders.make_vault(resource_group=resource_group, container="vault-one")
