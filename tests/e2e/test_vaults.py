"""Recovery Services vaults end to end in Chromium: invalid names rejected with the rule
shown, a vault created, its deployment watched to completion live on a real portal worker,
the storage redundancy changed, and vault credentials downloaded and verified."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e._vault_support import e2e_storage, portal_worker  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def test_create_deploy_configure_and_download_credentials(
    e2e_storage,  # noqa: F811 - before the live portal starts
    signed_in_page,
    live_portal,
    portal_owner,
    portal_worker,  # noqa: F811
    screenshot,
):
    from vaults.credentials import credentials_verify
    from vaults.models import Vault
    from vaults.storage import primary_account, secondary_account

    page = signed_in_page
    Vault.objects.create(
        subscription=portal_owner.subscription,
        resource_group=portal_owner.resource_group,
        name="Existing-Vault",
        location="West Europe",
        state=Vault.State.READY,
    )

    page.goto(live_portal + "/vaults/")
    expect(page.get_by_role("heading", name="Recovery Services vaults")).to_be_visible()
    page.locator("#create-vault").click()
    expect(page.get_by_role("heading", name="Create Recovery Services vault")).to_be_visible()
    page.locator("#id_resource_group").select_option(label="rg-backup-west")

    # Invalid names first: each is rejected live, naming the rule it breaks.
    name = page.get_by_label("Vault name")
    check = page.locator("#name-check")
    for typed, rule in [
        ("1vault", "must start with a letter"),
        ("my_vault", "only letters, digits and hyphens"),
        ("v", "must be 2 to 50 characters"),
        ("x" * 51, "must be 2 to 50 characters"),
        ("existing-vault", "already exists in subscription Contoso Production"),
    ]:
        name.fill(typed)
        expect(check).to_contain_text(rule)
    name.fill("9 lives")
    expect(check.locator("li")).to_have_count(2)  # start and characters, both named
    screenshot("vault-create-invalid-name", full_page=True)

    # ... and again on submit: the server keeps us on Basics with the rules.
    page.locator("#wizard-review").click()
    expect(page.locator(".wizard-steps li.active")).to_have_text("Basics")
    expect(check).to_contain_text("must start with a letter")

    name.fill("haven-e2e-vault")
    expect(check).to_contain_text("haven-e2e-vault is available")
    page.get_by_label("Region").select_option("North Europe")
    screenshot("vault-create-basics", full_page=True)
    page.locator("#wizard-next").click()
    expect(page.locator(".wizard-steps li.active")).to_have_text("Tags")
    page.get_by_label("Tag name").first.fill("environment")
    page.get_by_label("Tag value").first.fill("production")
    page.locator("#wizard-next").click()
    expect(page.get_by_text("Validation passed")).to_be_visible()
    expect(page.locator("#review-name")).to_have_text("haven-e2e-vault")
    screenshot("vault-create-review", full_page=True)
    page.locator("#wizard-create").click()

    # Deployment: in progress until the worker runs; then it completes without a reload.
    status = page.locator("#deployment-status")
    expect(status).to_contain_text("Deployment is in progress")
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    expect(page.locator("#bell-count")).to_have_text("1")
    vault = Vault.objects.get(name="haven-e2e-vault")
    assert vault.state == Vault.State.DEPLOYING
    screenshot("vault-deployment-in-progress")
    page.evaluate("window.__sameDocument = true")
    portal_worker.start()
    expect(status).to_contain_text("Your deployment is complete", timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator(".toast").last).to_contain_text("Deployment succeeded")
    page.locator("#bell summary").click()
    expect(page.locator("#notification-list")).to_contain_text("Deployment succeeded")
    page.locator("#bell summary").click()
    vault.refresh_from_db()
    assert vault.state == Vault.State.READY and vault.tags == {"environment": "production"}
    assert primary_account().container_exists(vault.container)
    assert secondary_account().container_exists(vault.container)
    screenshot("vault-deployment-complete")

    # A month of usage as the hourly sampler records it (and the bytes really stored now),
    # so the overview's chart has a history to draw.
    from datetime import timedelta

    from django.utils import timezone

    from vaults.services import vault_usage_record, vault_usage_sample

    now = timezone.now()
    vault.usage_samples.all().delete()
    for days_ago, kib in [(27, 40), (21, 95), (14, 180), (9, 260), (4, 410), (1, 520)]:
        vault_usage_record(vault=vault, bytes_used=kib * 1024, at=now - timedelta(days=days_ago))
    with primary_account().store(vault.container) as store:
        store.put("data/pack-0001", b"\0" * (600 * 1024))
    vault_usage_sample(vault=vault)

    page.locator("#go-to-resource").click()
    expect(page).to_have_url(re.compile(rf"/vaults/{vault.pk}/$"))
    essentials = page.locator(".essentials-card")
    expect(essentials).to_contain_text("rg-backup-west")
    expect(essentials).to_contain_text("North Europe")
    expect(essentials).to_contain_text("Contoso Production")
    expect(essentials).to_contain_text("Geo-redundant")
    expect(page.locator("svg.usage-chart")).to_be_visible()
    expect(page.locator(".usage-value")).to_have_text("600.0\xa0KB")
    page.wait_for_timeout(300)  # let toasts settle out of the picture
    page.evaluate("document.querySelectorAll('.toast').forEach(t => t.remove())")
    screenshot("vault-overview", full_page=True)

    # Storage redundancy: Properties › Backup Configuration › Update.
    page.get_by_role("link", name="Properties").click()
    expect(page.locator("#redundancy-value")).to_have_text("Geo-redundant")
    page.locator("#update-backup-configuration").click()
    page.locator("input[name=redundancy][value=lrs]").check()
    screenshot("vault-backup-configuration")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#redundancy-value")).to_have_text("Locally-redundant")
    vault.refresh_from_db()
    assert vault.redundancy == Vault.Redundancy.LOCAL
    assert not secondary_account().container_exists(vault.container)

    # Getting started › Backup › Prepare infrastructure, then the credentials.
    page.get_by_role("link", name="Backup", exact=True).click()
    page.get_by_label("Where is your workload running?").select_option("On-premises")
    expect(page.get_by_label("Files and folders")).to_be_checked()
    expect(page.get_by_label("System State")).not_to_be_checked()  # offered, not preselected
    page.get_by_role("button", name="Prepare infrastructure").click()
    prepare = page.locator("#prepare")
    expect(prepare).to_be_visible()
    expect(page.locator("#download-agent")).to_have_attribute("href", "/machines/agent/installer/")
    download = page.locator("#download-credentials")
    expect(download).to_be_disabled()
    page.get_by_label("Already downloaded or using the latest Haven agent").check()
    expect(download).to_be_enabled()
    expect(page.locator("#single-use-help")).to_contain_text("registers one machine")
    page.get_by_label("Limit to one registration").check()
    page.evaluate("document.querySelectorAll('.toast').forEach(t => t.remove())")
    screenshot("vault-prepare-infrastructure", full_page=True)
    with page.expect_download() as caught:
        download.click()
    file = caught.value
    assert re.fullmatch(
        r"haven-e2e-vault_\d{4}-\d{2}-\d{2}\.VaultCredentials", file.suggested_filename
    )
    content = Path(file.path()).read_bytes()
    document = json.loads(content)
    assert document["credentials"]["vault_id"] == str(vault.pk)
    assert document["credentials"]["vault_name"] == "haven-e2e-vault"
    assert document["credentials"]["single_use"] is True
    record = credentials_verify(content)
    assert record.vault_id == vault.pk and record.issued_by_id == portal_owner.user.pk

    page.get_by_role("navigation", name="Vault menu").get_by_role(
        "link", name="Vault credentials"
    ).click()
    expect(page.locator("#credentials-table tbody tr")).to_have_count(1)
    expect(page.locator("#credentials-table")).to_contain_text("Active")
    expect(page.locator("#credentials-table")).to_contain_text("One")
