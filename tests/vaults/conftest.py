"""Builders and fixtures for the vault tests (tests/vaults/storage has its own).

Nothing here is autouse, so the storage tests below this folder are not affected; vault
test modules opt in with ``pytestmark = pytest.mark.usefixtures("vault_env")``.
The cast: alice owns subscription "Contoso"; bob is a member whose role a test picks;
charlie belongs to another subscription only.
"""

from __future__ import annotations

import pytest

from portal.models import Membership, ResourceGroup, Role, Subscription, User
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


def make_user(username: str, **extra) -> User:
    return User.objects.create_user(username=username, password=None, **extra)


@pytest.fixture
def alice(db) -> User:
    return make_user("alice", first_name="Alice", last_name="Archer")


@pytest.fixture
def bob(db) -> User:
    return make_user("bob")


@pytest.fixture
def charlie(db) -> User:
    user = make_user("charlie")
    other = Subscription.objects.create(name="Fabrikam", created_by=user)
    Membership.objects.create(user=user, subscription=other, role=Role.OWNER)
    return user


@pytest.fixture
def subscription(alice) -> Subscription:
    sub = Subscription.objects.create(name="Contoso", created_by=alice)
    Membership.objects.create(user=alice, subscription=sub, role=Role.OWNER)
    return sub


@pytest.fixture
def resource_group(subscription) -> ResourceGroup:
    return ResourceGroup.objects.create(
        subscription=subscription, name="backup-rg", location="West Europe"
    )


@pytest.fixture
def member(bob, subscription):
    """``member(role)`` gives bob that role on Contoso and returns bob."""

    def give(role: str) -> User:
        Membership.objects.update_or_create(
            user=bob, subscription=subscription, defaults={"role": role}
        )
        return bob

    return give


def make_vault(resource_group, name="vault-one", *, state=Vault.State.READY, **extra) -> Vault:
    vault = Vault.objects.create(
        subscription=resource_group.subscription,
        resource_group=resource_group,
        name=name,
        location=extra.pop("location", "West Europe"),
        state=state,
        **extra,
    )
    return vault


@pytest.fixture
def deployed_vault(vault_env, resource_group, alice) -> Vault:
    """A vault deployed for real on the test storage."""
    from vaults.services import vault_deploy

    vault = make_vault(resource_group, state=Vault.State.DEPLOYING, created_by=alice)
    return vault_deploy(vault=vault)


def make_machine(vault, name="web-01", **extra):
    from agents.models import Machine

    return Machine.objects.create(vault=vault, name=name, hostname=name, **extra)
