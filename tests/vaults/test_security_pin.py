"""Security PINs (generated, used once, refused expired / reused / wrong / another user's,
guessing stopped) and the vault's security settings (soft delete, always-on, security
features), as services and pages."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from portal.models import Role
from vaults import security_pin, services
from vaults.models import ActivityEntry, SecurityPin, Vault

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("vault_env")]
OP = security_pin.Operation.STOP_AND_DELETE


def use(user, vault, pin, **kwargs):
    return security_pin.consume(user=user, vault=vault, pin=pin, operation=OP, **kwargs)


def test_a_pin_is_stored_only_as_a_keyed_hash_and_works_once(alice, vault):
    pin = security_pin.generate(user=alice, vault=vault)
    assert re.fullmatch(r"[0-9]{8}", pin)
    row = SecurityPin.objects.get()
    assert pin not in (row.digest, row.salt) and len(row.digest) == 64
    assert use(alice, vault, pin).used_for == OP.value
    with pytest.raises(security_pin.PinAlreadyUsed, match="already used"):
        use(alice, vault, pin)


def test_an_expired_pin_is_refused_saying_so(alice, vault):
    pin = security_pin.generate(user=alice, vault=vault)
    later = timezone.now() + security_pin.VALID_FOR + timedelta(seconds=1)
    with pytest.raises(security_pin.PinExpired, match=r"expired \(PINs are valid for 5 minutes\)"):
        use(alice, vault, pin, now=later)


def test_another_users_pin_and_another_vaults_are_refused(alice, member, vault, resource_group):
    bob = member(Role.CONTRIBUTOR)
    pin = security_pin.generate(user=bob, vault=vault)
    with pytest.raises(security_pin.PinOfAnotherUser, match="another user"):
        use(alice, vault, pin)
    other = Vault.objects.create(
        subscription=vault.subscription, resource_group=resource_group, name="vault-two"
    )
    with pytest.raises(security_pin.PinWrong):
        use(bob, other, pin)
    assert use(bob, vault, pin)  # still bob's, on its vault


def test_a_new_pin_replaces_the_older_one(alice, vault):
    first = security_pin.generate(user=alice, vault=vault)
    second = security_pin.generate(user=alice, vault=vault)
    with pytest.raises(security_pin.PinExpired, match="replaced by a newer one"):
        use(alice, vault, first)
    assert use(alice, vault, second)


def test_wrong_pins_are_counted_and_five_void_the_live_one(alice, vault):
    pin = security_pin.generate(user=alice, vault=vault)
    wrong = "0" * 8 if pin != "0" * 8 else "1" * 8
    for _ in range(security_pin.MAX_WRONG - 1):
        with pytest.raises(security_pin.PinWrong, match="wrong"):
            use(alice, vault, wrong)
    with pytest.raises(security_pin.PinTooManyWrong):
        use(alice, vault, wrong)
    with pytest.raises(security_pin.PinTooManyWrong):
        use(alice, vault, pin)  # the right one no longer works either
    with pytest.raises(security_pin.PinMissing, match="Security PIN"):
        use(alice, vault, " ")
    refusals = ActivityEntry.objects.filter(operation="pin.refuse", outcome="refused")
    # Each try is counted; the same refusal repeated is one entry (vaults.activity).
    assert sum(refusals.values_list("repeat_count", flat=True)) == security_pin.MAX_WRONG + 2
    assert sorted(refusals.values_list("repeat_count", flat=True)) == [
        1,
        2,
        security_pin.MAX_WRONG - 1,
    ]


# --- security settings ----------------------------------------------------------------------
def settings_set(vault, user, **changes):
    values = {
        "security_features": vault.security_features,
        "soft_delete_enabled": vault.soft_delete_enabled,
        "soft_delete_days": str(vault.soft_delete_days),
        "always_on": vault.soft_delete_always_on,
        "pin": "",
    }
    values.update(changes)
    return services.vault_security_settings_set(vault=vault, user=user, **values)


def test_new_vaults_have_security_features_and_14_days_of_soft_delete(vault):
    assert vault.security_features and vault.soft_delete_enabled
    assert vault.soft_delete_days == 14 and not vault.soft_delete_always_on


def test_lengthening_needs_no_pin_shortening_and_turning_off_do(
    alice, vault, django_capture_on_commit_callbacks
):
    assert settings_set(vault, alice, soft_delete_days="30").soft_delete_days == 30
    assert mail.outbox == []
    with pytest.raises(security_pin.PinMissing):
        settings_set(vault, alice, soft_delete_days="20")
    with pytest.raises(security_pin.PinMissing):
        settings_set(vault, alice, soft_delete_enabled=False)
    with pytest.raises(security_pin.PinMissing):
        settings_set(vault, alice, security_features=False)
    pin = security_pin.generate(user=alice, vault=vault)
    with django_capture_on_commit_callbacks(execute=True):
        vault = settings_set(vault, alice, soft_delete_enabled=False, pin=pin)
    assert not vault.soft_delete_enabled
    assert "security settings weakened" in mail.outbox[0].subject
    assert "soft delete turned off" in mail.outbox[0].body


def test_days_outside_14_to_180_are_refused(alice, vault):
    for days in ("13", "181", "²", ""):
        with pytest.raises(ValidationError) as caught:
            settings_set(vault, alice, soft_delete_days=days)
        assert "14 to 180 days" in caught.value.message_dict["soft_delete_days"][0]


def test_always_on_is_irreversible(alice, vault):
    vault = settings_set(vault, alice, always_on=True, soft_delete_days="30")
    pin = security_pin.generate(user=alice, vault=vault)
    for change in (
        {"always_on": False},
        {"soft_delete_enabled": False},
        {"soft_delete_days": "14"},
    ):
        with pytest.raises(ValidationError):
            settings_set(vault, alice, pin=pin, **change)
    vault.refresh_from_db()
    assert vault.soft_delete_always_on and vault.soft_delete_enabled
    assert vault.soft_delete_days == 30
    assert SecurityPin.objects.get().used_at is None  # refused before the PIN was used


# --- pages --------------------------------------------------------------------------------------
def test_pin_page_generates_for_contributors_only_and_is_not_cached(
    client, alice, member, charlie, vault
):
    url = f"/vaults/{vault.pk}/properties/security-pin/"
    client.force_login(charlie)
    assert client.get(url).status_code == 404
    client.force_login(member(Role.BACKUP_OPERATOR))
    assert client.get(url).status_code == 200
    assert client.post(url).status_code == 403
    client.force_login(alice)
    response = client.post(url)
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    pin = re.search(r'id="security-pin-value">(\d{8})<', response.content.decode()).group(1)
    assert use(alice, vault, pin)
    generated = ActivityEntry.objects.filter(operation="pin.generate")
    assert sorted(generated.values_list("username", "outcome")) == [
        ("alice", "succeeded"),
        ("bob", "refused"),
    ]


def test_settings_page_refuses_a_reader_and_shows_a_wrong_pin(client, alice, member, vault):
    url = f"/vaults/{vault.pk}/properties/security-settings/"
    form = {"security_features": "on", "soft_delete_days": "14", "security_pin": "12345678"}
    client.force_login(member(Role.READER))
    assert client.get(url).status_code == 200
    assert client.post(url, form).status_code == 403
    client.force_login(alice)
    security_pin.generate(user=alice, vault=vault)
    response = client.post(url, form)  # soft delete unticked: turning it off
    assert response.status_code == 400 and "security PIN is wrong" in response.content.decode()
    vault.refresh_from_db()
    assert vault.soft_delete_enabled
