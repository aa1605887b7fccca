"""Replacing a machine is a Contributor's decision; a credentials file may register once
(issue 12, item 5).

Before the fix a Backup Operator, refused the portal's Unregister, downloaded vault
credentials and registered with ``--replace``: the existing machine's token, broker user and
grants were revoked. Now the credentials record who downloaded them and with which role, and
replacing a registered machine (by name or id) needs a Contributor's or Owner's file.
"""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from agents.models import Machine, MachineToken
from portal.models import Membership, Role
from tests.agents.conftest import (  # noqa: F401 (fixtures)
    agent_env,
    issue_credentials,
    redis_broker,
    register_directly,
)
from vaults import credentials as vc
from vaults.models import VaultCredential

pytestmark = pytest.mark.django_db


@pytest.fixture
def web01(agent_env, redis_broker, vault, alice):  # noqa: F811 (the imported fixtures)
    return register_directly(vault, alice, "web-01")[0]


def register(client, content: bytes, name: str = "web-01", **extra):
    return client.post(
        reverse("agent_api:register"),
        json.dumps({"credentials": content.decode(), "machine_name": name, **extra}),
        content_type="application/json",
    )


def assert_untouched(machine: Machine, redis_url: str) -> None:
    import redis

    machine.refresh_from_db()
    assert machine.unregistered_at is None
    assert MachineToken.objects.filter(machine=machine, revoked_at__isnull=True).exists()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert machine.broker_username in client.acl_users()
    finally:
        client.close()


def test_a_backup_operator_cannot_replace_a_machine_by_name(client, web01, vault, member):
    bob = member(Role.BACKUP_OPERATOR)
    response = register(client, issue_credentials(vault, bob), replace=True)
    assert response.status_code == 403
    assert response.json()["error"] == "role_too_low"
    assert "Contributor" in response.json()["message"]
    assert_untouched(web01, client_redis(web01))
    assert Machine.objects.count() == 1


def test_a_backup_operator_cannot_replace_a_machine_by_id(client, web01, vault, member):
    bob = member(Role.BACKUP_OPERATOR)
    response = register(
        client, issue_credentials(vault, bob), "web-99", replace=True,
        replaces_machine_id=str(web01.pk),
    )  # fmt: skip
    assert response.status_code == 403
    assert_untouched(web01, client_redis(web01))


def test_a_demoted_contributors_credentials_cannot_replace(client, web01, vault, member):
    bob = member(Role.CONTRIBUTOR)
    content = issue_credentials(vault, bob)
    Membership.objects.filter(user=bob).update(role=Role.BACKUP_OPERATOR)
    response = register(client, content, replace=True)
    assert response.status_code == 403
    assert "no longer has that role" in response.json()["message"]
    assert_untouched(web01, client_redis(web01))


def test_a_backup_operator_still_registers_new_machines(client, web01, vault, member):
    bob = member(Role.BACKUP_OPERATOR)
    response = register(client, issue_credentials(vault, bob), "web-02")
    assert response.status_code == 201
    assert_untouched(web01, client_redis(web01))


def test_a_contributor_replaces_a_machine(client, web01, vault, member):
    bob = member(Role.CONTRIBUTOR)
    response = register(client, issue_credentials(vault, bob), replace=True)
    assert response.status_code == 201
    assert response.json()["replaced"] == [str(web01.pk)]
    web01.refresh_from_db()
    assert web01.unregistered_at is not None
    # Recover Data lists it as "Replaced by web-01 on <date>" (docs/restore.md)
    assert str(web01.replaced_by_id) == response.json()["machine_id"]
    assert web01.gone_label == f"Replaced by web-01 on {web01.unregistered_at:%Y-%m-%d}"


def test_the_credentials_record_who_downloaded_them_and_as_what(vault, member):
    bob = member(Role.BACKUP_OPERATOR)
    _name, content, record = vc.credentials_issue(vault=vault, issued_by=bob, single_use=True)
    record.refresh_from_db()
    assert (record.issued_by, record.issued_role, record.single_use) == (
        bob,
        Role.BACKUP_OPERATOR,
        True,
    )
    fields = json.loads(content)["credentials"]
    assert (fields["issued_by"], fields["issued_role"], fields["single_use"]) == (
        "bob",
        "backup_operator",
        True,
    )


@pytest.mark.usefixtures("agent_env", "redis_broker")
def test_a_single_use_credentials_file_registers_only_once(client, vault, alice):
    _name, content, record = vc.credentials_issue(vault=vault, issued_by=alice, single_use=True)
    assert register(client, content, "web-01").status_code == 201
    again = register(client, content, "web-02")
    assert again.status_code == 403
    assert again.json()["error"] == "used"
    assert "limited to one registration" in again.json()["message"]
    assert list(Machine.objects.values_list("name", flat=True)) == ["web-01"]
    record.refresh_from_db()
    assert record.used_by_machine == Machine.objects.get().pk
    assert VaultCredential.objects.get().status(record.used_at) == "used"


def client_redis(machine: Machine) -> str:
    from django.conf import settings

    return settings.REDIS_URL
