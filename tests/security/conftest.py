"""The attack suite: one test per attack we know of, named for the attack.

Every test here also runs in the real-servers pass (PostgreSQL, Redis, Azurite): an attack
that only fails on the embedded defaults proves nothing about production. Only a test marked
``serverless`` (the agent's engine on local files, which reaches none of them) is left out:
that pass would run it exactly as the first one does.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/security/" in str(item.fspath) and not item.get_closest_marker("serverless"):
            item.add_marker(pytest.mark.servers)


@pytest.fixture
def no_broker(monkeypatch):
    """Agent tasks and portal tasks are recorded, not sent, and pushes dropped: for tests
    about the portal's answer to a request, not its delivery."""
    from jobs import services

    monkeypatch.setattr(services, "_send_to_machine", lambda machine, task, **kw: None)
    monkeypatch.setattr(services, "_enqueue", lambda name, *args: None)
    monkeypatch.setattr("portal.realtime.publish_now", lambda group, html: None)


@pytest.fixture
def machine(vault):
    from tests.support import builders

    return builders.make_machine(vault=vault, name="web-01")
