"""Builders and fixtures for the jobs tests.

The shared cast (tests/conftest.py: alice, bob, charlie, Contoso, vault "vault-one") plus
machine "web-01" (Europe/Amsterdam, online) and its policy. Pushes are captured (``pushes``), agent tasks recorded (``sent``).
"""

from __future__ import annotations

import pytest

from agents.models import Machine
from jobs import policy_rules, services
from tests.support import builders


@pytest.fixture
def pushes(monkeypatch):
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(
        "portal.realtime.publish_now", lambda group, html: sent.append((group, html))
    )
    return sent


@pytest.fixture
def sent(monkeypatch):
    """Agent tasks the portal sent, as (machine id, task name, kwargs)."""
    calls: list[tuple[str, str, dict]] = []

    def record(machine, task, **kwargs):
        calls.append((str(machine.pk), task, kwargs))

    monkeypatch.setattr(
        services, "_send_to_machine", lambda machine, task, **kw: record(machine, task, **kw)
    )
    return calls


@pytest.fixture(autouse=True)
def _jobs_env(settings, tmp_path, pushes, sent, monkeypatch):
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.HAVEN_PUBLIC_URL = "https://haven.example.test"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    # Portal tasks enqueued after commit are recorded, not sent to a broker.
    enqueued: list = []
    monkeypatch.setattr(services, "_enqueue", lambda name, *args: enqueued.append((name, args)))
    return enqueued


def make_machine(vault, name="web-01", *, online=True, time_zone="Europe/Amsterdam") -> Machine:
    """A machine with its own (empty) storage container, as registration leaves it."""
    import uuid

    from django.utils import timezone

    from vaults import storage

    container = f"m-{uuid.uuid4().hex[:20]}"
    storage.primary_account().create_container(container)
    return builders.make_machine(
        vault=vault,
        name=name,
        time_zone=time_zone,
        last_seen_at=timezone.now() if online else None,
        container=container,
    )


def stored_point(machine, snapshot_id: str, pack_ids=()) -> None:
    """Write what a backup of ``machine`` leaves in its container for a recovery point: the
    manifest and the packs (the portal checks they exist before recording the point)."""
    from agents.runtime.engine import layout
    from vaults import storage

    with storage.primary_account().store(machine.container) as store:
        store.put(layout.manifest_blob(snapshot_id), b"sealed manifest")
        for pack_id in pack_ids:
            if not store.exists(layout.pack_blob(pack_id)):
                store.put(layout.pack_blob(pack_id), b"pack")


@pytest.fixture
def machine(vault) -> Machine:
    return make_machine(vault)


def spec(**changes) -> dict:
    base = policy_rules.default_spec()
    base["items"] = ["/srv/data"]
    base.update(changes)
    return base


@pytest.fixture
def policy(machine, alice):
    return services.policy_save(machine=machine, spec=spec(), user=alice)


def token_for(machine) -> str:
    from agents.api_auth import machine_token_issue

    return machine_token_issue(machine=machine)
