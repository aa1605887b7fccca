"""A machine's passphrase change, portal side (jobs.services.passphrase): the agent API's
two steps with the PIN rules, what a compromised machine cannot do, the record on the
machine page and in the activity log, and the old key's removal after the period. The
agent's command is in tests/agents/test_change_passphrase.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.runtime.engine import Repository, WrongPassphrase
from jobs import services
from jobs.models import PassphraseChange
from portal.models import Role
from tests.jobs.conftest import make_machine, token_for
from tests.support import builders
from vaults import security_pin, storage
from vaults.models import ActivityEntry, SecurityPin

pytestmark = pytest.mark.django_db
OLD = "the old passphrase of web-01"
NEW = "the brand new passphrase, typed twice"
FAST_KDF = {"n": 2**10, "r": 8, "p": 1}


def store_of(machine):
    return storage.primary_account().store(machine.container)


def keys(machine) -> list[str]:
    with store_of(machine) as store:
        return sorted(b.name for b in store.list("keys/"))


@pytest.fixture
def repo_machine(vault):
    machine = make_machine(vault)
    with store_of(machine) as store:
        Repository.init(store, OLD, kdf=FAST_KDF)
    return machine


def post(client, token, path, body):
    return client.post(
        f"/api/agent/jobs/{path}",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def authorize(client, token, pin):
    return post(client, token, "passphrase/", {"security_pin": pin})


def upload_new_key(machine) -> str:
    with store_of(machine) as store:
        return Repository.open(store, OLD).add_key(NEW)


def opens(machine, passphrase) -> bool:
    with store_of(machine) as store:
        try:
            Repository.open(store, passphrase)
        except WrongPassphrase:
            return False
    return True


def test_the_change_is_recorded_and_the_old_key_goes_only_after_the_period(
    client, alice, repo_machine
):
    machine, token = repo_machine, token_for(repo_machine)
    before = keys(machine)
    pin = security_pin.generate(user=alice, vault=machine.vault)
    answer = authorize(client, token, pin)
    assert answer.status_code == 201, answer.content
    change_id = answer.json()["change_id"]
    assert answer.json()["old_keys"] == [k.removeprefix("keys/") for k in before]
    key = upload_new_key(machine)
    done = post(client, token, f"passphrase/{change_id}/complete/", {"key": key})
    assert done.status_code == 200, done.content
    change = PassphraseChange.objects.get()
    assert change.user == alice and change.new_key == key
    assert change.retire_after - change.completed_at == timedelta(days=14)
    entry = ActivityEntry.objects.get(operation=ActivityEntry.Operation.PASSPHRASE_CHANGE)
    assert entry.user == alice and entry.resource_name == machine.name
    client.force_login(alice)
    page = client.get(reverse("agents:detail", args=[machine.pk])).content.decode()
    assert f"Passphrase changed on {change.completed_at:%Y-%m-%d %H:%M} UTC" in page

    # Nothing the machine reports makes the old key go sooner; both passphrases open.
    assert services.passphrase_keys_retire_due() == 0
    assert services.passphrase_keys_retire_due(now=change.retire_after - timedelta(hours=1)) == 0
    assert opens(machine, OLD) and opens(machine, NEW)
    assert services.passphrase_keys_retire_due(now=change.retire_after) == 1
    assert keys(machine) == [f"keys/{key}"]
    assert not opens(machine, OLD) and opens(machine, NEW)
    assert services.passphrase_keys_retire_due(now=change.retire_after + timedelta(days=1)) == 0


def test_pin_rules_refuse_before_anything_is_authorised(
    client, alice, bob, subscription, repo_machine, resource_group
):
    machine, token = repo_machine, token_for(repo_machine)
    vault = machine.vault
    assert authorize(client, "not-a-token", "12345678").status_code == 401
    assert authorize(client, token, "").status_code == 403
    wrong = authorize(client, token, "00000000")
    assert wrong.status_code == 403 and "wrong" in wrong.json()["message"]

    # Expired, and another vault's PIN.
    expired = security_pin.generate(
        user=alice, vault=vault, now=timezone.now() - timedelta(minutes=10)
    )
    assert "expired" in authorize(client, token, expired).json()["message"]
    other_vault = builders.make_vault(resource_group=resource_group, name="vault-two")
    other = security_pin.generate(user=alice, vault=other_vault)
    assert "wrong" in authorize(client, token, other).json()["message"]

    # A PIN of someone no longer Contributor (a Reader now) is refused.
    builders.give_role(user=bob, subscription=subscription, role=Role.CONTRIBUTOR)
    bobs = security_pin.generate(user=bob, vault=vault)
    builders.give_role(user=bob, subscription=subscription, role=Role.READER)
    assert "no longer a Contributor" in authorize(client, token, bobs).json()["message"]
    assert not PassphraseChange.objects.exists()

    # Used once, then refused as used.
    pin = security_pin.generate(user=alice, vault=vault)
    assert authorize(client, token, pin).status_code == 201
    again = authorize(client, token, pin)
    assert again.status_code == 403 and "already used" in again.json()["message"]
    row = SecurityPin.objects.get(used_at__isnull=False)
    assert row.user == alice and row.used_for == security_pin.Operation.PASSPHRASE_CHANGE


def test_five_wrong_pins_typed_on_a_machine_void_the_live_one(client, alice, repo_machine):
    machine, token = repo_machine, token_for(repo_machine)
    pin = security_pin.generate(user=alice, vault=machine.vault)
    for _ in range(security_pin.MAX_WRONG):
        assert authorize(client, token, "99999999" if pin != "99999999" else "1").status_code == 403
    assert authorize(client, token, pin).status_code == 403


def test_a_machine_cannot_complete_with_a_bogus_key_or_anothers_change(
    client, alice, vault, repo_machine
):
    machine, token = repo_machine, token_for(repo_machine)
    other = make_machine(vault, name="web-02")
    pin = security_pin.generate(user=alice, vault=vault)
    change_id = authorize(client, token, pin).json()["change_id"]
    old_key = keys(machine)[0].removeprefix("keys/")
    path = f"passphrase/{change_id}/complete/"
    assert post(client, token_for(other), path, {"key": "0" * 16}).status_code == 404
    assert post(client, token, path, {"key": old_key}).status_code == 400
    assert post(client, token, path, {"key": "../config"}).status_code == 400
    assert post(client, token, path, {"key": 7}).status_code == 400
    missing = post(client, token, path, {"key": "0123456789abcdef"})
    assert missing.status_code == 400 and missing.json()["error"] == "key_missing"
    with store_of(machine) as store:
        store.put("keys/00000000000000ff", b"not a key")
    assert post(client, token, path, {"key": "00000000000000ff"}).json()["error"] == (
        "key_malformed"
    )
    PassphraseChange.objects.filter(pk=change_id).update(
        authorized_at=timezone.now() - services.passphrase.COMPLETE_WITHIN - timedelta(1)
    )
    key = upload_new_key(machine)
    lapsed = post(client, token, path, {"key": key})
    assert lapsed.status_code == 409 and lapsed.json()["error"] == "authorisation_lapsed"
    assert not ActivityEntry.objects.filter(
        operation=ActivityEntry.Operation.PASSPHRASE_CHANGE
    ).exists()
    assert services.passphrase_keys_retire_due(now=timezone.now() + timedelta(days=400)) == 0
    assert opens(machine, OLD)
