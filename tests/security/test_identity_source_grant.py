"""Reading another machine's container needs a person's say-so (issue 12, item 3).

The attacker holds one machine of the vault (its token: a compromised machine). Before the
fix, ``POST /api/agent/recovery/grant/`` gave it a read-and-list grant to any sibling's
container. Now the portal issues one only against a live authorisation: a person with the
Recover Data role asked about or restores that source onto that target, or vault credentials
such a person downloaded after the target registered are presented with the request.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from agents.models import SourceGrantAuthorisation
from jobs.models import Job, RecoveryPoint
from jobs.recovery import services
from portal.models import Membership, Role
from tests.recovery.conftest import make_machine
from vaults import credentials as vc
from vaults.models import VaultCredential

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _env(settings, tmp_path, monkeypatch):
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.DATA_DIR = tmp_path / "data"
    monkeypatch.setattr("portal.realtime.publish_now", lambda group, html: None)
    monkeypatch.setattr(services, "_send", lambda machine, task, **kw: None)
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def web01(vault):
    return make_machine(vault, "web-01")


@pytest.fixture
def web02(vault):
    return make_machine(vault, "web-02")


@pytest.fixture
def web03(vault):
    return make_machine(vault, "web-03")


@pytest.fixture
def point(web01):
    at = timezone.now() - timedelta(days=1)
    return RecoveryPoint.objects.create(
        machine=web01, vault=web01.vault, snapshot_id="b" * 32, manifest_blob="snapshots/b",
        created_at=at, tagged_for=at, kind=RecoveryPoint.Kind.ADHOC,
    )  # fmt: skip


def ask_grant(client, machine, source: str = "web-01", credentials: bytes | None = None):
    from agents.api_auth import machine_token_issue

    body: dict = {"source_machine": source}
    if credentials is not None:
        body["vault_credentials"] = credentials.decode()
    return client.post(
        reverse("recovery_api:grant"),
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {machine_token_issue(machine=machine)}",
    )


def fresh_credentials(vault, user) -> tuple[bytes, VaultCredential]:
    _name, content, record = vc.credentials_issue(vault=vault, issued_by=user)
    return content, record


def test_a_machine_cannot_get_a_grant_to_a_siblings_container_on_its_own(client, web01, web02):
    response = ask_grant(client, web02, str(web01.pk))
    assert response.status_code == 403
    assert "authorised" in response.json()["message"]
    assert "grant" not in response.json()
    assert not SourceGrantAuthorisation.objects.exists()


def test_a_portal_question_lets_only_its_target_read_its_source(client, alice, web01, web02, web03):
    services.question_ask(user=alice, source=web01, target=web02, kind="points")
    row = SourceGrantAuthorisation.objects.get()
    assert (row.source, row.target, row.authorised_by, row.via) == (web01, web02, alice, "portal")

    assert ask_grant(client, web03).status_code == 403  # the other sibling still cannot
    ok = ask_grant(client, web02)
    assert ok.status_code == 200
    expires = datetime.fromisoformat(ok.json()["grant"]["expires_at"])
    assert expires <= row.expires_at
    row.refresh_from_db()
    assert row.grants_issued == 1 and row.last_granted_at is not None


def test_a_question_authorisation_expires(client, alice, web01, web02):
    services.question_ask(user=alice, source=web01, target=web02, kind="browse", path="/")
    SourceGrantAuthorisation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert ask_grant(client, web02).status_code == 403


def test_a_restore_authorisation_ends_with_its_job(client, alice, web01, web02, point):
    job = services.restore_start(
        user=alice, source=web01, target=web02, recovery_point=point.snapshot_id,
        paths=["/home"], folder="/srv/restored",
    )  # fmt: skip
    assert SourceGrantAuthorisation.objects.get().job_id == job.pk
    assert ask_grant(client, web02).status_code == 200
    Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED)
    assert ask_grant(client, web02).status_code == 403


def test_an_authorisation_ends_when_its_person_loses_the_role(client, member, web01, web02, point):
    bob = member(Role.BACKUP_OPERATOR)
    services.download_start(
        user=bob, source=web01, target=web02, recovery_point=point.snapshot_id, paths=["/a"]
    )
    assert ask_grant(client, web02).status_code == 200
    Membership.objects.filter(user=bob).update(role=Role.READER)
    assert ask_grant(client, web02).status_code == 403


def test_an_authorisation_ends_when_its_persons_account_is_deactivated(
    client, vault, member, web01, web02, point
):
    bob = member(Role.BACKUP_OPERATOR)
    services.download_start(
        user=bob, source=web01, target=web02, recovery_point=point.snapshot_id, paths=["/a"]
    )
    content, _ = fresh_credentials(vault, bob)
    assert ask_grant(client, web02).status_code == 200
    type(bob).objects.filter(pk=bob.pk).update(is_active=False)
    assert ask_grant(client, web02).status_code == 403
    refused = ask_grant(client, web02, credentials=content)
    assert refused.status_code == 403
    assert "no longer has that role" in refused.json()["message"]


def test_the_credentials_a_machine_registered_with_cannot_open_a_siblings_container(
    client, vault, alice, web01
):
    # The file on (or stolen from) the machine was downloaded before it registered.
    content, _ = fresh_credentials(vault, alice)
    VaultCredential.objects.update(issued_at=timezone.now() - timedelta(minutes=5))
    web02 = make_machine(vault, "web-02")
    response = ask_grant(client, web02, credentials=content)
    assert response.status_code == 403
    assert response.json()["error"] == "credentials_stale"
    assert "Download fresh vault credentials" in response.json()["message"]
    assert not SourceGrantAuthorisation.objects.exists()


def test_fresh_credentials_of_a_backup_operator_authorise_one_command(
    client, vault, member, web01, web02
):
    bob = member(Role.BACKUP_OPERATOR)
    content, record = fresh_credentials(vault, bob)
    response = ask_grant(client, web02, credentials=content)
    assert response.status_code == 200
    row = SourceGrantAuthorisation.objects.get()
    assert (row.via, row.authorised_by, row.credential_id) == ("credentials", bob, record.pk)
    assert row.expires_at <= timezone.now() + services.COMMAND_AUTHORISATION
    assert datetime.fromisoformat(response.json()["grant"]["expires_at"]) <= row.expires_at


def test_credentials_of_someone_no_longer_a_backup_operator_authorise_nothing(
    client, vault, member, web01, web02
):
    bob = member(Role.BACKUP_OPERATOR)
    content, _ = fresh_credentials(vault, bob)
    Membership.objects.filter(user=bob).update(role=Role.READER)
    response = ask_grant(client, web02, credentials=content)
    assert response.status_code == 403
    assert "no longer has that role" in response.json()["message"]


def test_revoked_or_edited_credentials_authorise_nothing(client, vault, alice, web01, web02):
    content, record = fresh_credentials(vault, alice)
    edited = json.loads(content)
    edited["credentials"]["issued_role"] = "owner"
    edited["credentials"]["vault_name"] = "other"
    assert ask_grant(client, web02, credentials=json.dumps(edited).encode()).status_code == 403
    vc.credentials_revoke(credential=record, user=alice)
    assert ask_grant(client, web02, credentials=content).status_code == 403
    assert not SourceGrantAuthorisation.objects.exists()


def test_credentials_of_another_vault_authorise_nothing(client, subscription, alice, web01, web02):
    from tests.recovery.conftest import make_vault

    other = make_vault(subscription, "vault-two")
    content, _ = fresh_credentials(other, alice)
    response = ask_grant(client, web02, credentials=content)
    assert response.status_code == 403
    assert "vault-two" in response.json()["message"]


def test_every_grant_to_another_machines_container_is_logged(client, alice, web01, web02, caplog):
    services.question_ask(user=alice, source=web01, target=web02, kind="points")
    with caplog.at_level("INFO", logger="haven.audit"):
        assert ask_grant(client, web02).status_code == 200
        assert ask_grant(client, make_machine(web01.vault, "web-09")).status_code == 403
    assert "read grant: machine web-02" in caplog.text and "authorised by alice" in caplog.text
    assert "read refused: machine web-09" in caplog.text
