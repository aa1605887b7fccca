"""The cast for Recover Data: the shared one (tests/conftest.py: alice, bob, charlie, Contoso,
vault "vault-one") plus the online machines "web-01" and "web-02" and web-01's recovery
points. Agent tasks are recorded (``sent``), pushes captured."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from agents.models import Machine
from jobs.models import Job, RecoveryPoint
from jobs.recovery import services
from portal.models import ResourceGroup
from tests.support import builders
from vaults.models import Vault


@pytest.fixture(autouse=True)
def _env(settings, tmp_path, monkeypatch):
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.DATA_DIR = tmp_path / "data"
    settings.HAVEN_PUBLIC_URL = "https://haven.example.test"
    import portal.urls

    if not any(getattr(p, "namespace", None) == "recovery_api" for p in portal.urls.urlpatterns):
        settings.ROOT_URLCONF = "tests.recovery.urls"
    monkeypatch.setattr("portal.realtime.publish_now", lambda group, html: None)
    cache.clear()
    _empty_downloads()  # on Azurite the container outlives a test
    yield
    cache.clear()
    _empty_downloads()


def _empty_downloads() -> None:
    from agents.runtime.blobstore import StorageError
    from vaults.storage import downloads_store

    with contextlib.suppress(StorageError), downloads_store() as store:  # broken on purpose
        for info in list(store.list()):
            store.delete(info.name)


@pytest.fixture
def sent(monkeypatch):
    """Agent tasks sent, as (machine name, task, kwargs)."""
    calls: list[tuple[str, str, dict]] = []

    def record(machine, task, **kw):
        calls.append((machine.name, task, kw))

    monkeypatch.setattr(services, "_send", record)
    monkeypatch.setattr(services, "_ask", record)
    return calls


def make_vault(subscription, name="vault-one") -> Vault:
    rg = ResourceGroup.objects.filter(subscription=subscription, name="backup-rg").first()
    rg = rg or builders.make_resource_group(subscription=subscription)
    return builders.make_vault(resource_group=rg, name=name, container=name)


def make_machine(vault, name) -> Machine:
    """An online machine with its container made on the test storage."""
    from vaults.storage import primary_account

    machine = builders.make_machine(
        vault=vault, name=name, time_zone="Europe/Amsterdam", last_seen_at=timezone.now()
    )
    machine.container = f"machine-{machine.pk.hex}"
    machine.save(update_fields=["container"])
    primary_account().create_container(machine.container)
    return machine


@pytest.fixture
def web01(vault) -> Machine:
    return make_machine(vault, "web-01")


@pytest.fixture
def web02(vault) -> Machine:
    return make_machine(vault, "web-02")


@pytest.fixture
def points(web01) -> list[RecoveryPoint]:
    base = timezone.now().replace(microsecond=0) - timedelta(days=3)
    out = []
    for i in range(3):
        at = base + timedelta(days=i, hours=i)
        out.append(
            RecoveryPoint.objects.create(
                machine=web01, vault=web01.vault, snapshot_id=f"{i:032x}",
                manifest_blob=f"snapshots/{i:032x}", created_at=at, tagged_for=at,
                kind=RecoveryPoint.Kind.ADHOC, logical_bytes=1000 * (i + 1), file_count=3,
            )
        )  # fmt: skip
    return out


@pytest.fixture
def token_for():
    from agents.api_auth import machine_token_issue

    return lambda machine: {"HTTP_AUTHORIZATION": f"Bearer {machine_token_issue(machine=machine)}"}


@pytest.fixture
def download_job(client, alice, web01, web02, sent):
    """alice asked for /home/a.txt of web-01 through web-02 (signed in on ``client``)."""
    point = RecoveryPoint.objects.create(
        machine=web01, vault=web01.vault, snapshot_id="a" * 32, manifest_blob="x",
        created_at=timezone.now(), tagged_for=timezone.now(), kind="adhoc",
    )  # fmt: skip
    client.force_login(alice)
    response = client.post(
        reverse("recovery:download", args=[web01.pk, web02.pk]),
        {"rp": point.snapshot_id, "paths": ["/home/a.txt"]},
    )
    job = Job.objects.get()
    assert response.url == reverse("recovery:download_status", args=[job.pk])
    return job
