"""Machine > Properties > Throttling in Chromium, with a real agent: the week preview
follows the form as it is edited, a rate out of range is named on its field, the saved
schedule goes out as a new policy version, the agent applies it (the drift clears) and
``haven-agent status`` prints it."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_with_cookie

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_throttling_editor_previews_the_week_and_the_agent_applies_it(
    agent_portal, vault_owner, agent_machines, page, screenshot
):
    from jobs import policy_rules, services
    from jobs.models import BackupPolicy

    agent = agent_machines.register("web-01", vault_owner.credentials)
    machine = agent.model
    spec = policy_rules.default_spec() | {"items": [str(agent.home / "data")]}
    services.policy_save(machine=machine, spec=spec, user=vault_owner.user)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)
    page.set_default_timeout(10_000)
    page.goto(f"{agent_portal}/machines/{machine.pk}/")
    page.get_by_role("navigation", name="Machine").get_by_role("link", name="Properties").click()
    preview = page.locator("#throttle-preview")
    expect(preview).to_contain_text("Throttling is off")
    expect(page.get_by_text(f"machine's local time ({machine.time_zone})")).to_be_visible()

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
    expect(preview.locator("td.work")).to_have_count(4 * 8)
    screenshot("throttling-editor", viewport="desktop", full_page=True)
    policy = BackupPolicy.objects.get(machine=machine)
    assert policy.throttle == {
        "enabled": True,
        "work_days": [0, 1, 2, 3],
        "work_start": 9,
        "work_end": 17,
        "work_kbps": 2000,
        "off_kbps": 50000,
    }
    deadline = time.monotonic() + 30
    while BackupPolicy.objects.get(pk=policy.pk).applied_version != 2:
        assert time.monotonic() < deadline, agent.log_text()
        time.sleep(0.2)
    page.reload()
    expect(page.get_by_text("Applied by the agent")).to_be_visible()
    page.get_by_role("navigation", name="Machine").get_by_role("link", name="Overview").click()
    expect(page.locator("[data-field=throttling]")).to_have_text(
        "2 Mbps on Mon, Tue, Wed, Thu 09:00-17:00, 50 Mbps at other times (machine time)"
    )
    status = agent.ok("status")
    assert (
        "network throttling:      2 Mbps on Mon, Tue, Wed, Thu 09:00-17:00, "
        "50 Mbps at other times (machine time)"
    ) in status, status
