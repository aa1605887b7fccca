"""Machine > Properties > Throttling in Chromium: the week preview follows the form as it
is edited, a rate out of range is named on its field, and the saved schedule is shown as a
new policy version the agent has not applied yet."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_with_cookie

pytestmark = [pytest.mark.timeout(120)]


def test_the_throttling_editor_previews_the_week_and_saves_into_the_policy(
    live_portal, portal_owner, page, screenshot, settings, tmp_path
):
    from jobs import policy_rules, services
    from jobs.models import BackupPolicy
    from tests.support import builders

    settings.STORAGE_DIR = tmp_path / "storage"
    vault = builders.make_vault(resource_group=portal_owner.resource_group, name="vault-e2e")
    machine = builders.make_machine(vault=vault, name="web-01", time_zone="Europe/Amsterdam")
    spec = policy_rules.default_spec() | {"items": ["/srv/data"]}
    services.policy_save(machine=machine, spec=spec, user=portal_owner.user)
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    page.set_default_timeout(10_000)
    page.goto(f"{live_portal}/machines/{machine.pk}/")
    page.get_by_role("navigation", name="Machine").get_by_role("link", name="Properties").click()
    preview = page.locator("#throttle-preview")
    expect(preview).to_contain_text("Throttling is off")
    expect(page.get_by_text("machine's local time (Europe/Amsterdam)")).to_be_visible()

    page.locator("[data-field=enabled]").check()
    expect(preview.locator("td.work")).to_have_count(5 * 9)  # Mon-Fri 09:00-18:00
    page.locator("select[name=work_end]").select_option("17")
    page.locator("input[name=work_days][value='4']").uncheck()  # Friday off
    page.fill("#work_rate", "2")
    page.locator("select[name=work_unit]").select_option("Mbps")
    page.fill("#off_rate", "100")
    page.locator("select[name=off_unit]").select_option("Kbps")
    expect(preview).to_contain_text("Fix the 1 problem above")
    page.click("[data-action=save-throttling]")
    error = page.locator("[data-error-for=off_rate]")
    expect(error).to_have_text("The bandwidth must be from 512 Kbps to 1,023 Mbps.")
    screenshot("throttling-error", viewport="desktop", full_page=True)

    page.fill("#off_rate", "50")
    page.locator("select[name=off_unit]").select_option("Mbps")
    expect(preview.locator("td.work")).to_have_count(4 * 8)
    expect(preview.locator("[data-field=work-rate]")).to_have_text("2 Mbps")
    expect(preview.locator("[data-field=off-rate]")).to_have_text("50 Mbps")
    page.click("[data-action=save-throttling]")
    expect(
        page.get_by_text("Network throttling of web-01 saved (backup policy version 2)")
    ).to_be_visible()
    expect(page.locator("[data-field=drift]")).to_have_text("Not applied")
    expect(preview.locator("td.work")).to_have_count(4 * 8)
    screenshot("throttling-editor", viewport="desktop", full_page=True)
    assert BackupPolicy.objects.get(machine=machine).throttle == {
        "enabled": True,
        "work_days": [0, 1, 2, 3],
        "work_start": 9,
        "work_end": 17,
        "work_kbps": 2000,
        "off_kbps": 50000,
    }
