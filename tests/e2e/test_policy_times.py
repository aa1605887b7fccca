"""The backup policy's times in Chromium: 24-hour, as the rest of the portal shows them.
A browser shows ``<input type="time">`` in its own locale's clock (02:00 AM in en-US),
so the editor offers its times as half hours in a list."""

from __future__ import annotations

import re

from playwright.sync_api import expect


def test_policy_times_are_shown_and_chosen_in_24_hours(
    signed_in_page, live_portal, portal_owner, screenshot
):
    from django.utils import timezone

    from jobs.models import BackupPolicy
    from tests.support import builders

    page = signed_in_page
    vault = builders.make_vault(resource_group=portal_owner.resource_group, name="vault-prod")
    machine = builders.make_machine(vault=vault, name="web-01", last_seen_at=timezone.now())
    policy = BackupPolicy.objects.create(
        machine=machine, items=["/srv"], frequency="daily", times=["02:00", "18:15"],
        retention={"daily": {"days": 7}},
    )  # fmt: skip
    page.goto(f"{live_portal}/jobs/machines/{machine.pk}/policy/")
    shown = "s => s.options[s.selectedIndex].text"
    first, second, third = (page.get_by_label(f"Time {n}", exact=True) for n in (1, 2, 3))
    assert first.evaluate(shown) == "02:00"
    assert second.evaluate(shown) == "18:15"  # a time set through the API, kept
    assert third.evaluate(shown) == "Not used"
    labels = first.locator("option").all_text_contents()
    assert labels[1:4] == ["00:00", "00:30", "01:00"] and labels[-1] == "23:30"
    assert all(not re.search(r"AM|PM", label) for label in labels)
    expect(page.locator("input[type=time]")).to_have_count(0)
    screenshot("policy-times", target=page.locator(".choice-row").first)

    third.select_option("21:30")
    page.locator("[data-action=save-policy]").click()
    expect(third).to_have_value("21:30")  # the page again, saved
    policy.refresh_from_db()
    assert policy.times == ["02:00", "18:15", "21:30"]
    page.goto(f"{live_portal}/jobs/machines/{machine.pk}/backup-now/")
    expect(page.locator("dd", has_text="Daily at")).to_contain_text("Daily at 02:00, 18:15, 21:30")
