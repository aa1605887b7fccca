"""Verify now in Chromium on a machine with a real agent (installed, registered, its worker
on real Redis): a clean vault verifies to Completed on the live job page; after one byte of
a pack is flipped in storage, the next verify fails naming the pack, the recovery point is
shown Damaged (recovery points and the Recover Data wizard, which warns), and the vault's
Backup Alerts show a Critical alert; ``haven-agent verify`` on the machine exits 4 naming
the same pack, recovery point and files."""

from __future__ import annotations

import random
import time

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_with_cookie

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def wait_for_job(job, agent, timeout: float = 60):
    from jobs.models import Job

    deadline = time.monotonic() + timeout
    while True:
        job.refresh_from_db()
        if job.status not in Job.ACTIVE:
            return job
        assert time.monotonic() < deadline, f"job {job.pk} is still {job.status}:\n" + (
            agent.log_text()
        )
        time.sleep(0.2)


def verify_now(page, url, machine):
    """Press Verify now on the machine page; returns the new job with its page open."""
    from jobs.models import Job

    before = set(Job.objects.filter(machine=machine).values_list("pk", flat=True))
    page.goto(f"{url}/machines/{machine.pk}/")
    page.locator("[data-action=verify-now]").click()
    page.wait_for_url("**/jobs/*/")
    job = Job.objects.filter(machine=machine).exclude(pk__in=before).get()
    assert job.operation == Job.Operation.VERIFY
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    return job


def flip_a_byte_of_a_pack(machine, point) -> str:
    """Damage the largest pack of ``point`` behind the agent's back (the portal's storage
    account may delete; the machine's grant may not): one bit, early in its chunk data."""
    from agents.runtime.engine import layout
    from vaults import storage

    with storage.primary_account().store(machine.container) as store:
        sizes = {p: len(store.get(layout.pack_blob(p))) for p in point.pack_ids}
        pack = max(sizes, key=sizes.__getitem__)
        data = bytearray(store.get(layout.pack_blob(pack)))
        data[100] ^= 0x01
        store.delete(layout.pack_blob(pack))
        store.put(layout.pack_blob(pack), bytes(data))
    return pack


def test_verify_now_completes_then_finds_a_flipped_byte(
    agent_portal, vault_owner, agent_machines, page, screenshot
):
    from jobs import policy_rules, services
    from jobs.models import Alert, Job, RecoveryPoint

    agent = agent_machines.register("web-01", vault_owner.credentials)
    data = agent.home / "data"
    data.mkdir()
    rng = random.Random(16)
    for i in range(24):
        (data / f"file-{i:02}.bin").write_bytes(rng.randbytes(200_000))
    spec = policy_rules.default_spec()
    spec["items"] = [str(data)]
    machine = agent.model
    services.policy_save(machine=machine, spec=spec, user=vault_owner.user)
    backup = wait_for_job(services.backup_start(machine=machine), agent)
    assert backup.status == Job.Status.COMPLETED, backup.error
    point = RecoveryPoint.objects.get(job=backup)
    page.set_default_timeout(15_000)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)

    job = verify_now(page, agent_portal, machine)
    live = page.locator(f"#job-{job.pk}-live")
    expect(live.locator("[data-field=status]")).to_have_text("Completed", timeout=60_000)
    expect(live.locator("[data-field=files]")).to_contain_text(f"of {len(point.pack_ids)}")
    screenshot("verify-completed")

    pack = flip_a_byte_of_a_pack(machine, point)
    job = verify_now(page, agent_portal, machine)
    live = page.locator(f"#job-{job.pk}-live")
    expect(live.locator("[data-field=status]")).to_have_text("Failed", timeout=60_000)
    expect(live.locator("[data-field=error]")).to_contain_text(f"pack {pack}")
    expect(live.locator("[data-field=error]")).to_contain_text(point.snapshot_id[:8])
    screenshot("verify-failed")
    # the same check on the machine, from the command line
    done = agent.run("verify")
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"of {len(point.pack_ids)} packs" in done.stdout
    assert f"DAMAGED pack {pack}" in done.stderr and point.snapshot_id in done.stderr
    assert str(data / "file-") in done.stderr

    page.goto(f"{agent_portal}/jobs/machines/{machine.pk}/recovery-points/")
    row = page.locator(f"tr[data-point='{point.snapshot_id}']")
    expect(row.locator("[data-field=damaged]")).to_have_text("Damaged")
    expect(page.locator("[data-field=damaged-points]")).to_contain_text("1 recovery point")
    screenshot("verify-damaged-points")

    page.goto(f"{agent_portal}/jobs/vaults/{machine.vault_id}/alerts/")
    alert = page.locator("tr[data-alert-kind=verify_damage]")
    expect(alert).to_contain_text("Critical")
    expect(alert).to_contain_text("Verify found damage")
    assert Alert.objects.get(kind=Alert.Kind.VERIFY_DAMAGE).severity == "critical"

    page.goto(f"{agent_portal}/machines/{machine.pk}/")
    expect(page.locator("[data-field=verify]")).to_contain_text("every 4 weeks")
    expect(page.locator("[data-field=damaged-points]")).to_have_text("1 damaged recovery point")
    screenshot("verify-machine-page")
    page.goto(f"{agent_portal}/jobs/machines/{machine.pk}/policy/")
    expect(page.locator("#verify_weeks")).to_have_value("4")
    screenshot("verify-policy-editor", target=page.locator("#policy-verify"))

    page.goto(f"{agent_portal}/recover/{machine.pk}/to/{machine.pk}/")
    page.locator(".calendar-day.has-points").first.click()
    choice = page.locator(f"input[name=rp][value='{point.snapshot_id}']")
    choice.locator("xpath=..").locator("[data-field=damaged]").wait_for()
    choice.check()
    expect(page.locator("[data-field=damaged-warning]")).to_be_visible()
    expect(page.locator("[data-field=damaged-warning]")).to_contain_text(str(data))
    screenshot("verify-wizard-warning", full_page=True)
