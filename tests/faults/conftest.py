"""Faults on purpose: each test here breaks a server, a process or a disk mid-way and shows
that nothing is lost. They all run in the real-servers pass; a server is "broken" through a
loopback ``tests.support.faultproxy.FaultProxy`` or a private instance, never by stopping the
shared one."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.servers)
