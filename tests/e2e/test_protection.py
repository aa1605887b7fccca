"""Stop protection, soft delete and the security PIN in Chromium, one walk: a PIN generated,
protection stopped with the data retained and resumed, an expired PIN refused, the data
deleted with a PIN, the typed name and a reason, shown as Soft deleted with the days left,
undeleted, the used PIN refused the second time, the vault's delete page naming the item
that still holds data, and the vault locked immutable: deleting the data refused with the
reason, the lock and the refusal in the activity log."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import expect

from tests.e2e._vault_support import e2e_storage  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def _protected_machine(owner):
    """vault-dr with web-01 (a policy, one recovery point stored in its container)."""
    from django.utils import timezone

    from agents.runtime.engine import layout
    from jobs import policy_rules, services
    from jobs.models import RecoveryPoint
    from tests.support import builders
    from vaults import storage

    vault = builders.make_vault(resource_group=owner.resource_group, name="vault-dr")
    machine = builders.make_machine(
        vault=vault, name="web-01", container="m-web01", last_seen_at=timezone.now()
    )
    account = storage.primary_account()
    account.create_container(machine.container)
    with account.store(machine.container) as store:
        store.put(layout.manifest_blob("s1"), b"sealed manifest")
        store.put(layout.pack_blob("aa01"), b"pack")
    spec = policy_rules.default_spec()
    spec["items"] = ["/srv/data"]
    services.policy_save(machine=machine, spec=spec, user=owner.user)
    at = timezone.now() - timedelta(hours=3)
    RecoveryPoint.objects.create(
        machine=machine,
        vault=vault,
        snapshot_id="s1",
        manifest_blob=layout.manifest_blob("s1"),
        created_at=at,
        tagged_for=at,
        kind=RecoveryPoint.Kind.ADHOC,
        pack_ids=["aa01"],
        stored_bytes=4096,
    )
    return vault, machine


def test_stop_resume_delete_undelete_with_security_pins(
    e2e_storage,  # noqa: F811 - before the live portal starts
    signed_in_page,
    live_portal,
    portal_owner,
    screenshot,
):
    from django.utils import timezone

    from jobs.models import BackupPolicy
    from vaults.models import SecurityPin

    page = signed_in_page
    vault, machine = _protected_machine(portal_owner)
    items_url = f"{live_portal}/jobs/vaults/{vault.pk}/backup-items/"
    row = page.locator(f"tr[data-machine='{machine.pk}']")

    def generate_pin() -> str:
        page.goto(f"{live_portal}/vaults/{vault.pk}/properties/")
        page.locator("#open-security-pin").click()
        page.locator("#generate-pin").click()
        value = page.locator("#security-pin-value")
        expect(value).to_have_text(re.compile(r"^\d{8}$"))
        return value.inner_text()

    def delete_with(pin: str) -> None:
        page.goto(items_url)
        row.locator("[data-action=stop-backup]").click()
        page.locator("#choice-delete").check()
        page.get_by_label("Type the machine name").fill("web-01")
        page.get_by_label("Reason").fill("Server decommissioned")
        page.get_by_label("Security PIN").fill(pin)
        page.locator("#stop-backup").click()

    # The vault's security settings, then a PIN, shown once on Properties › Security PIN.
    page.goto(f"{live_portal}/vaults/{vault.pk}/properties/security-settings/")
    expect(page.locator("#soft_delete_days")).to_have_value("14")
    screenshot("protection-security-settings", full_page=True)
    page.goto(f"{live_portal}/vaults/{vault.pk}/properties/")
    expect(page.locator("#soft-delete-value")).to_contain_text("kept 14 days")
    screenshot("protection-properties", full_page=True)
    first = generate_pin()
    screenshot("protection-security-pin")

    # Stop protection and retain data, from Backup items; then Resume on the machine page.
    page.goto(items_url)
    expect(row.locator("[data-field=protection]")).to_have_text("Protected")
    row.locator("[data-action=stop-backup]").click()
    expect(page.locator("#protection-state")).to_contain_text("Backed up on the schedule")
    page.get_by_label("Keep all recovery points until deleted").check()
    screenshot("protection-stop-form", full_page=True)
    page.locator("#stop-backup").click()
    expect(page).to_have_url(items_url)
    expect(row.locator("[data-field=protection]")).to_have_text("Protection stopped")
    expect(row.locator("[data-action=backup-now]")).to_have_count(0)
    page.goto(f"{live_portal}/machines/{machine.pk}/")
    state = page.locator("#protection-state")
    expect(state).to_contain_text("no scheduled or ad hoc backups run")
    expect(state).to_contain_text("Every recovery point is kept")
    screenshot("protection-machine-stopped")
    page.locator("[data-action=resume-backup]").click()
    expect(page.locator("[data-field=protection]")).to_have_text("Protected")
    assert BackupPolicy.objects.get(machine=machine).is_protected

    # An expired PIN is refused, saying so; nothing changes.
    SecurityPin.objects.filter(used_at__isnull=True).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    delete_with(first)
    expect(page.locator("#stop-error")).to_contain_text("This security PIN expired")
    assert BackupPolicy.objects.get(machine=machine).is_protected

    # Stop and delete with a fresh PIN: soft deleted, with the days left, not restorable.
    second = generate_pin()
    delete_with(second)
    expect(page).to_have_url(items_url)
    expect(row.locator("[data-field=protection]")).to_contain_text("Soft deleted")
    expect(row.locator("[data-field=protection]")).to_contain_text("14 days left")
    screenshot("protection-soft-deleted", full_page=True)
    page.goto(f"{live_portal}/machines/{machine.pk}/")
    expect(page.locator("#protection-state")).to_contain_text(
        "cannot be restored until it is undeleted"
    )
    screenshot("protection-machine-soft-deleted")

    # Undelete: back to protection stopped, data retained.
    page.locator("[data-action=undelete]").click()
    expect(page.locator("[data-field=protection]")).to_have_text("Protection stopped")

    # The used PIN is refused the second time.
    delete_with(second)
    expect(page.locator("#stop-error")).to_contain_text("already used")
    screenshot("protection-pin-reused")
    policy = BackupPolicy.objects.get(machine=machine)
    assert policy.protection == BackupPolicy.Protection.STOPPED

    # The vault cannot be deleted while the item holds data; the page links to it.
    page.goto(f"{live_portal}/vaults/{vault.pk}/delete/")
    blockers = page.locator("#delete-blockers")
    expect(blockers).to_contain_text("web-01: protection stopped, data retained (1 recovery point)")
    screenshot("protection-vault-delete-blockers")

    # Lock the vault immutable (the name typed and a PIN), then deleting is refused.
    third = generate_pin()
    page.goto(f"{live_portal}/vaults/{vault.pk}/properties/")
    page.locator("#update-immutable-vault").click()
    page.locator("[data-option=locked] input").check()
    page.get_by_label("To lock, type the vault's name").fill("vault-dr")
    page.locator("#security_pin").fill(third)
    screenshot("protection-immutable-lock", full_page=True)
    page.locator("#save-immutability").click()
    expect(page.locator("#immutability-value")).to_contain_text("Locked:")
    screenshot("protection-immutable-locked", full_page=True)
    delete_with(generate_pin())
    expect(page.locator("#stop-error")).to_contain_text(
        "Vault vault-dr is an immutable vault (locked): deleting the backup data of web-01 "
        "is blocked"
    )
    expect(page.locator("#delete-immutable")).to_contain_text(
        "Blocked while the vault is immutable"
    )
    screenshot("protection-immutable-delete-refused", full_page=True)
    page.goto(f"{live_portal}/vaults/{vault.pk}/delete/")
    expect(blockers).to_contain_text("its backup data cannot be deleted")
    assert BackupPolicy.objects.get(machine=machine).protection == policy.protection
    page.goto(f"{live_portal}/vaults/{vault.pk}/activity/")
    expect(
        page.locator("tr[data-operation='vault.immutability'][data-outcome=succeeded]")
    ).to_contain_text("Disabled → Locked")
    refusal = page.locator("tr[data-operation='protection.stop_delete'][data-outcome=refused]")
    expect(refusal.first).to_contain_text("immutable vault (locked)")
    # ... and every step of the walk before it, each once at least, with its outcome.
    for operation, outcome in (
        ("pin.generate", "succeeded"),
        ("pin.use", "succeeded"),
        ("pin.refuse", "refused"),
        ("protection.stop_retain", "succeeded"),
        ("protection.resume", "succeeded"),
        ("protection.stop_delete", "succeeded"),
        ("protection.undelete", "succeeded"),
    ):
        row = page.locator(f"tr[data-operation='{operation}'][data-outcome={outcome}]")
        expect(row.first).to_be_visible()
    screenshot("protection-immutable-activity", full_page=True)
