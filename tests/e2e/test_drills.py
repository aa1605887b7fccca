"""A restore drill in Chromium with a real agent: web-01 backs up a folder; on its page a
Backup Operator presses Run restore drill, the Restore drill job completes live on its page
with its evidence, and the machine's page then says when it was last proven restorable."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_with_cookie
from tests.e2e.test_recovery import seed_tree, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_run_restore_drill_proves_the_machine_restorable(
    agent_portal, vault_owner, agent_machines, tmp_path, page, screenshot
):
    from jobs import policy_rules, services
    from jobs.models import Job

    web01 = agent_machines.register("web-01", vault_owner.credentials)
    source = tmp_path / "src"
    seed_tree(source)
    spec = policy_rules.default_spec()
    spec["items"] = [str(source)]
    services.policy_save(machine=web01.model, spec=spec, user=vault_owner.user)
    backup = wait_for_job(services.backup_start(machine=web01.model, user=vault_owner.user), web01)
    assert backup.status == Job.Status.COMPLETED, backup.error

    page.set_default_timeout(20_000)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)
    page.goto(f"{agent_portal}/machines/{web01.model.pk}/")
    expect(page.locator("[data-field=drill-proven]")).to_have_text("Never")
    page.locator("[data-action=run-drill]").click()

    page.wait_for_url("**/jobs/*/")
    job = Job.objects.get(operation=Job.Operation.DRILL)
    assert page.url.endswith(f"/jobs/{job.pk}/")
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    page.evaluate("window.__havenSamePage = true")
    live = page.locator(f"#job-{job.pk}-live")
    expect(live.locator("[data-field=status]")).to_have_text("Completed", timeout=60_000)
    assert page.evaluate("window.__havenSamePage") is True, "the job page was reloaded"
    expect(live.locator("[data-field=drill-evidence]")).to_contain_text("8 of 8 files restored")
    expect(live.locator("[data-field=drill-mismatches]")).to_contain_text("every restored byte")
    screenshot("drill-job-completed")

    page.goto(f"{agent_portal}/machines/{web01.model.pk}/")
    proven = page.locator("[data-field=drill-proven]")
    expect(proven).to_contain_text("(8 files,")
    expect(proven.locator("[data-field=drill-full]")).to_contain_text("to restore")
    screenshot("drill-machine-proven")
    page.goto(f"{agent_portal}/jobs/machines/{web01.model.pk}/policy/")
    section = page.locator("#drill-settings")
    expect(section.get_by_label("Every month")).to_be_checked()
    screenshot("drill-policy-settings", target=section)
    # The copy is gone from the scratch folder (the agent's cache by default).
    scratch = web01.home / "cache" / "drills"
    assert not scratch.exists() or list(scratch.iterdir()) == []
