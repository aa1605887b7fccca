"""The activity log in Chromium: an Owner revokes vault credentials, opens the vault's
Activity log from the vault menu (a Reader's repeated refusal is one entry with its count), filters it by operation, exports the filtered log as CSV
and checks the file, then gives a user a role and finds it in the subscription-wide log, beside the pause of a
stranger guessing that user's password."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.slow


def test_filter_and_export_the_vault_activity_log(
    signed_in_page, live_portal, portal_owner, screenshot, tmp_path
):
    from django.conf import settings
    from django.test import Client
    from django.urls import reverse

    from tests.e2e.conftest import make_user
    from vaults import activity
    from vaults.activity import Operation, Outcome
    from vaults.credentials import credentials_issue
    from vaults.models import Vault

    page = signed_in_page
    alice = portal_owner.user
    vault = Vault.objects.create(
        subscription=portal_owner.subscription,
        resource_group=portal_owner.resource_group,
        name="vault-prod",
        location="West Europe",
        state=Vault.State.READY,
    )
    make_user("bob")
    # What came before: a download, a refused attempt by a Reader, a policy change.
    _name, _content, credential = credentials_issue(vault=vault, issued_by=alice)
    mallory = make_user("mallory")
    for _ in range(12):  # a Reader's loop: one entry, counted
        activity.record(
            operation=Operation.VAULT_DELETE,
            user=mallory,
            vault=vault,
            outcome=Outcome.REFUSED,
            reason="This needs the Contributor role or higher; you are Reader.",
        )
    activity.record(
        operation=Operation.POLICY_CHANGE,
        user=alice,
        vault=vault,
        resource=activity.Resource("backup policy", "1", "web-01"),
        detail={"version": 2, "changes": {"retention.daily.days": {"from": 7, "to": 30}}},
    )

    # The Owner revokes the credentials in the portal.
    page.goto(f"{live_portal}/vaults/{vault.pk}/credentials/")
    page.locator(f'tr[data-credential="{credential.pk}"]').get_by_role(
        "button", name="Revoke"
    ).click()
    expect(page.locator(f'tr[data-credential="{credential.pk}"]')).to_contain_text("Revoked")

    # Monitoring › Activity log shows all four, newest first.
    page.get_by_role("navigation", name="Vault menu").get_by_role(
        "link", name="Activity log"
    ).click()
    expect(page.get_by_role("heading", name="vault-prod | Activity log")).to_be_visible()
    rows = page.locator("#activity-log tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.first).to_contain_text("Revoke vault credentials")
    expect(rows.first).to_contain_text("alice")
    expect(rows.first).to_contain_text(str(credential.pk)[:8])
    expect(page.locator('tr[data-operation="vault.delete"]')).to_contain_text("Refused")
    expect(page.locator('tr[data-operation="vault.delete"]')).to_contain_text("12 times, last at")
    expect(page.locator('tr[data-operation="policy.change"]')).to_contain_text(
        "Daily points kept (days): 7 → 30"
    )
    screenshot("activity-log-vault", full_page=True)

    # Filter by operation: only the credentials entries remain.
    page.get_by_label("Operation").select_option(label="Revoke vault credentials")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(1)
    expect(page.locator(".filters-count")).to_have_text("1 entry")

    # Export what is shown.
    with page.expect_download() as info:
        page.get_by_test_id("activity-export").click()
    download = info.value
    assert download.suggested_filename.startswith("vault-prod-activity-")
    path = Path(download.save_as(tmp_path / "activity.csv") or tmp_path / "activity.csv")
    table = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert table[0] == activity.CSV_HEADER
    assert [row[1] for row in table[1:]] == ["Revoke vault credentials"]
    assert table[1][4] == "alice" and table[1][6] == "vault-prod"

    # The Owner gives bob the Reader role; the subscription's log has it, beside the
    # vault's entries (a role assignment belongs to no vault).
    subscription = portal_owner.subscription
    page.goto(f"{live_portal}/subscriptions/{subscription.pk}/access/")
    page.get_by_label("User name").fill("bob")
    page.get_by_label("Role", exact=True).select_option(label="Reader")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("#members")).to_contain_text("bob")
    # Someone guesses bob's password from one address until sign-in pauses: one entry.
    for _ in range(settings.HAVEN_SIGNIN_FAILURE_LIMIT + 3):
        Client().post(
            reverse("portal:login"),
            {"username": "bob", "password": "guess"},
            REMOTE_ADDR="203.0.113.5",
        )
    page.get_by_role("navigation", name="Subscription menu").get_by_role(
        "link", name="Activity log"
    ).click()
    expect(page.get_by_role("heading", name="Contoso Production | Activity log")).to_be_visible()
    rows = page.locator("#activity-log tbody tr")
    expect(rows).to_have_count(6)
    expect(rows.first).to_contain_text("Sign-in paused after failures")
    expect(rows.first).to_contain_text("User account bob")
    expect(rows.first).to_contain_text("203.0.113.5")
    expect(rows.nth(1)).to_contain_text("Add role assignment")
    expect(rows.nth(1)).to_contain_text("Subscription")
    expect(rows.nth(2)).to_contain_text("Vault vault-prod")
    screenshot("activity-log-subscription", full_page=True)
