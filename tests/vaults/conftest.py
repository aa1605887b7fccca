"""Builders and fixtures for the vault tests (tests/vaults/storage has its own).

Nothing here is autouse, so the storage tests below this folder are not affected; vault
test modules opt in with ``pytestmark = pytest.mark.usefixtures("vault_env")``.
The cast is the shared one (tests/conftest.py); vaults are made per test (``make_vault``)
or deployed for real (``deployed_vault``).
"""

from __future__ import annotations

import pytest

from tests.support import builders
from vaults.models import Vault


@pytest.fixture
def pushes(monkeypatch):
    """Live pushes, captured instead of sent: a list of (group, html)."""
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(
        "portal.realtime.publish_now", lambda group, html: sent.append((group, html))
    )
    return sent


@pytest.fixture
def vault_env(settings, tmp_path, pushes):
    """Local storage in temporary directories (Azurite in the servers pass), pushes captured."""
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.SECONDARY_STORAGE_DIR = tmp_path / "storage-secondary"
    settings.HAVEN_PUBLIC_URL = "https://haven.example.test"
    return settings


@pytest.fixture
def eager():
    """Celery tasks run inline (they are still enqueued only after commit)."""
    from portal.celery import app

    before = {"task_always_eager": app.conf.task_always_eager}
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    yield
    app.conf.update(before)


def make_vault(resource_group, name="vault-one", *, state=Vault.State.READY, **extra) -> Vault:
    return builders.make_vault(resource_group=resource_group, name=name, state=state, **extra)


@pytest.fixture
def deployed_vault(vault_env, resource_group, alice) -> Vault:
    """A vault deployed for real on the test storage."""
    from vaults.services import vault_deploy

    vault = make_vault(resource_group, state=Vault.State.DEPLOYING, created_by=alice)
    return vault_deploy(vault=vault)


def make_machine(vault, name="web-01", **extra):
    return builders.make_machine(vault=vault, name=name, hostname=name, **extra)
