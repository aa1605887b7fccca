"""The immutable vault: its states, each operation it blocks (refused with the reason,
nothing changed, the refusal in the activity log), and who may change it."""

from __future__ import annotations

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from jobs import services
from jobs.models import BackupPolicy, RecoveryPoint
from portal.models import Role
from tests.jobs.conftest import spec
from vaults import security_pin, selectors
from vaults.models import ActivityEntry, SecurityPin, Vault
from vaults.services import vault_immutability_set, vault_security_settings_set

pytestmark = pytest.mark.django_db
Immutability = Vault.Immutability


def set_state(vault, user, state, **kwargs):
    return vault_immutability_set(vault=vault, user=user, state=state, **kwargs)


def pin(user, vault) -> str:
    return security_pin.generate(user=user, vault=vault)


def entries(operation: str) -> list[tuple[str, str]]:
    return list(
        ActivityEntry.objects.filter(operation=operation)
        .order_by("at", "pk")
        .values_list("outcome", "reason")
    )


def test_enabled_is_reversible_and_locked_is_not(
    vault, alice, member, django_capture_on_commit_callbacks
):
    member(Role.CONTRIBUTOR)
    with django_capture_on_commit_callbacks(execute=True):
        set_state(vault, alice, Immutability.ENABLED)
    assert vault.immutability == Immutability.ENABLED
    assert "immutability enabled" in mail.outbox[0].subject
    with pytest.raises(ValidationError) as caught:  # disabling is critical: the PIN
        set_state(vault, alice, Immutability.DISABLED)
    assert "security PIN" in caught.value.message_dict["security_pin"][0]
    vault.refresh_from_db()
    assert vault.immutability == Immutability.ENABLED
    set_state(vault, alice, Immutability.DISABLED, pin=pin(alice, vault))
    assert vault.immutability == Immutability.DISABLED
    with pytest.raises(ValidationError) as caught:  # locking: the name typed, then the PIN
        set_state(vault, alice, Immutability.LOCKED, confirm="other", pin=pin(alice, vault))
    assert "type the vault's name" in caught.value.message_dict["confirm"][0]
    set_state(vault, alice, Immutability.LOCKED, confirm=vault.name, pin=pin(alice, vault))
    for state in (Immutability.ENABLED, Immutability.DISABLED):
        with pytest.raises(ValidationError, match="locked immutable vault"):
            set_state(vault, alice, state, pin=pin(alice, vault))
    vault.refresh_from_db()
    assert vault.immutability == Immutability.LOCKED
    with pytest.raises(ValidationError, match="Choose Disabled"):
        set_state(vault, alice, "frozen")
    outcomes = [outcome for outcome, _ in entries(ActivityEntry.Operation.IMMUTABILITY_CHANGE)]
    assert outcomes.count("succeeded") == 3
    # Five refusals; the two "locked immutable vault" ones (to enabled, to disabled) have the
    # same reason within minutes: one entry counted twice (vaults.activity).
    refusals = ActivityEntry.objects.filter(
        operation=ActivityEntry.Operation.IMMUTABILITY_CHANGE, outcome="refused"
    ).values_list("repeat_count", flat=True)
    assert sorted(refusals) == [1, 1, 1, 2]


def test_it_blocks_stop_protection_with_delete(vault, machine, policy, alice):
    set_state(vault, alice, Immutability.ENABLED)
    machine.vault.refresh_from_db()
    unused = pin(alice, vault)
    with pytest.raises(services.ProtectionRefused) as caught:
        services.protection_delete(
            machine=machine, user=alice, confirm_name=machine.name, reason="gone", pin=unused
        )
    assert "immutable vault (enabled)" in str(caught.value)
    assert "deleting the backup data of web-01 is blocked" in str(caught.value)
    policy.refresh_from_db()
    assert policy.protection == BackupPolicy.Protection.PROTECTED and policy.deleted_at is None
    assert SecurityPin.objects.get(user=alice).used_at is None  # refused before the PIN
    RecoveryPoint.objects.create(
        machine=machine,
        vault=vault,
        snapshot_id="s1",
        manifest_blob="snapshots/s1",
        created_at=timezone.now(),
        tagged_for=timezone.now(),
        kind=RecoveryPoint.Kind.ADHOC,
    )
    actions = [b.action for b in selectors.vault_delete_blockers(machine.vault)]
    assert any(a.startswith("Disable immutability (Properties › Immutable vault)") for a in actions)
    services.protection_stop(machine=machine, user=alice, retention="forever")  # allowed


def test_it_blocks_lowering_retention_but_not_raising_it(vault, machine, policy, alice):
    set_state(vault, alice, Immutability.LOCKED, confirm=vault.name, pin=pin(alice, vault))
    machine.vault.refresh_from_db()
    lower = spec()
    lower["retention"]["yearly"] = None
    with pytest.raises(ValidationError) as caught:
        services.policy_save(machine=machine, spec=lower, user=alice, pin=pin(alice, vault))
    (message,) = caught.value.message_dict["immutability"]
    assert "lowering the retention of web-01 is blocked" in message
    assert "This change lowers: yearly retention turned off" in message
    assert "cannot be disabled" in message
    policy.refresh_from_db()
    assert policy.version == 1 and policy.retention["yearly"] is not None
    ((outcome, reason),) = entries(ActivityEntry.Operation.POLICY_CHANGE)[1:]
    assert outcome == "refused" and "immutable vault" in reason
    longer = spec()
    longer["retention"]["daily"] = {"days": 60}
    assert services.policy_save(machine=machine, spec=longer, user=alice).version == 2


@pytest.mark.parametrize(
    "change, field",
    [
        ({"soft_delete_enabled": False}, "soft_delete_enabled"),
        ({"soft_delete_days": 20}, "soft_delete_days"),
    ],
)
def test_it_blocks_turning_soft_delete_off_or_shortening_it(vault, alice, change, field):
    Vault.objects.filter(pk=vault.pk).update(soft_delete_days=30)
    vault.refresh_from_db()
    set_state(vault, alice, Immutability.ENABLED)
    settings = {
        "security_features": True,
        "soft_delete_enabled": True,
        "soft_delete_days": 30,
        "always_on": False,
    }
    with pytest.raises(ValidationError) as caught:
        vault_security_settings_set(
            vault=vault, user=alice, pin=pin(alice, vault), **{**settings, **change}
        )
    assert (
        "is blocked, because it could lose recovery points" in caught.value.message_dict[field][0]
    )
    vault.refresh_from_db()
    assert vault.soft_delete_enabled and vault.soft_delete_days == 30
    vault_security_settings_set(vault=vault, user=alice, **{**settings, "soft_delete_days": 60})


def test_data_soft_deleted_before_can_still_be_undeleted(vault, machine, policy, alice):
    services.protection_delete(
        machine=machine, user=alice, confirm_name="web-01", reason="gone", pin=pin(alice, vault)
    )
    set_state(vault, alice, Immutability.ENABLED)
    services.protection_undelete(machine=machine, user=alice)
    policy.refresh_from_db()
    assert policy.protection == BackupPolicy.Protection.STOPPED


def test_roles_on_the_immutable_vault_page(client, vault, alice, member, charlie):
    """Outsider 404; Reader and Backup Operator see it and are refused (403, logged);
    Contributor enables it; a bad state is a 400 naming the choices."""
    url = f"/vaults/{vault.pk}/properties/immutable-vault/"
    client.force_login(charlie)
    assert client.get(url).status_code == 404 and client.post(url).status_code == 404
    for role in (Role.READER, Role.BACKUP_OPERATOR):
        bob = member(role)
        client.force_login(bob)
        assert client.get(url).status_code == 200
        assert client.post(url, {"immutability": "enabled"}).status_code == 403
    member(Role.CONTRIBUTOR)
    bad = client.post(url, {"immutability": "melted"})
    assert bad.status_code == 400 and "Choose Disabled, Enabled or Locked" in bad.content.decode()
    assert client.post(url, {"immutability": "enabled"}).status_code == 302
    vault.refresh_from_db()
    assert vault.immutability == Immutability.ENABLED
    page = client.get(f"/vaults/{vault.pk}/properties/").content.decode()
    assert "Enabled: deleting backup data" in page
    page = client.get(f"/vaults/{vault.pk}/properties/security-settings/").content.decode()
    assert 'id="soft-delete-immutable"' in page
    off = {"security_features": "on", "soft_delete_days": "14"}  # soft delete turned off
    refused = client.post(f"/vaults/{vault.pk}/properties/security-settings/", off)
    assert refused.status_code == 400 and "turning soft delete off is blocked" in (
        refused.content.decode()
    )
    refused = ActivityEntry.objects.filter(
        operation=ActivityEntry.Operation.IMMUTABILITY_CHANGE, outcome="refused", username="bob"
    )
    assert refused.count() == 3
    assert ActivityEntry.objects.filter(
        operation=ActivityEntry.Operation.SOFT_DELETE_SETTING, outcome="refused"
    ).exists()
