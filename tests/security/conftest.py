"""The attack suite: one test per attack we know of, named for the attack.

Every test here also runs in the real-servers pass (PostgreSQL, Redis, Azurite): an attack
that only fails on the embedded defaults proves nothing about production.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/security/" in str(item.fspath):
            item.add_marker(pytest.mark.servers)
