"""Geo-redundant storage and Cross Region Restore in Chromium, on two Azurite servers (the
primary started for this test, so it can be stopped; the secondary the session's second
Azurite): alice chooses Geo-redundant and enables Cross Region Restore; web-01 backs up;
the overview shows the replication lag while a pass copies, then "Up to date"; a second
backup is not replicated yet; the primary Azurite is stopped; the wizard's Secondary region
shows the second point as not yet copied, and restores the first one from the secondary,
byte for byte.

The replication passes run in this process (``services.replicate_all``, what the portal
worker's periodic task calls), so the test decides when they happen; each copy is slowed a
little during the first one so that the page can show it under way.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_with_cookie
from tests.e2e.test_recovery import assert_same_tree, seed_tree, wait_for_job
from tests.support import servers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        os.environ.get("HAVEN_TEST_STORAGE") != "azurite",
        reason="runs in the servers pass, on two Azurite servers",
    ),
]


@pytest.fixture
def geo_storage(settings, tmp_path, azurite_secondary):
    """Before ``agent_portal``: the portal's primary account on an Azurite of this test's
    own, the secondary on the session's second Azurite."""
    primary = servers.Azurite(tmp_path / "azurite-primary")
    primary.start()
    settings.AZURE_STORAGE_CONNECTION_STRING = primary.connection_string
    settings.SECONDARY_STORAGE_CONNECTION_STRING = azurite_secondary
    try:
        yield primary
    finally:
        primary.stop()


def test_choose_grs_watch_replication_and_restore_from_the_secondary_with_the_primary_down(
    geo_storage, agent_portal, vault_owner, agent_machines, tmp_path, page, screenshot
):
    from jobs import policy_rules, services
    from jobs.models import Job, RecoveryPoint, ReplicaState
    from jobs.services import replication
    from vaults.models import Vault

    vault = vault_owner.vault
    Vault.objects.filter(pk=vault.pk).update(redundancy=Vault.Redundancy.LOCAL)
    page.set_default_timeout(20_000)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)

    # Properties › Backup Configuration: Geo-redundant, then Cross Region Restore.
    page.goto(f"{agent_portal}/vaults/{vault.pk}/properties/backup-configuration/")
    expect(page.locator("[data-option=zrs]")).to_contain_text("Not available")
    page.locator("input[name=redundancy][value=grs]").check()
    screenshot("grs-backup-configuration")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#redundancy-value")).to_have_text("Geo-redundant")
    page.get_by_label("I understand that Cross Region Restore cannot be turned off").check()
    page.locator("#enable-crr").click()
    expect(page.locator("#crr-value")).to_have_text("Enabled")
    screenshot("grs-properties")

    web01 = agent_machines.register("web-01", vault_owner.credentials)
    source = tmp_path / "src" / "projects"
    seed_tree(source)
    spec = policy_rules.default_spec()
    spec["items"] = [str(source.parent)]
    services.policy_save(machine=web01.model, spec=spec, user=vault_owner.user)
    first = wait_for_job(services.backup_start(machine=web01.model, user=vault_owner.user), web01)
    assert first.status == Job.Status.COMPLETED, first.error

    # A pass copies, slowed so the overview shows it under way.
    real_copy = replication._copy_one

    def slow_copy(blob, source_store, target_store):
        time.sleep(0.4)
        return real_copy(blob, source_store, target_store)

    replication._copy_one = slow_copy
    worker = threading.Thread(target=services.replicate_all)
    try:
        worker.start()
        deadline = time.monotonic() + 30
        while not ReplicaState.objects.filter(pending_blobs__gt=0).exists():
            assert time.monotonic() < deadline, "the replication pass did not start"
            time.sleep(0.05)
        page.goto(f"{agent_portal}/vaults/{vault.pk}/")
        card = page.locator("#replication")
        expect(card.locator("#secondary-state")).to_contain_text("Available")
        expect(card.locator("#replication-lag")).to_contain_text("to copy")
        expect(card).to_contain_text("Replicating")
        screenshot("grs-overview-replicating")
        worker.join(60)
    finally:
        replication._copy_one = real_copy
        worker.join(60)
    page.reload()
    expect(page.locator("#replication-lag")).to_contain_text("Up to date")
    replicate = Job.objects.get(operation=Job.Operation.REPLICATE)
    assert replicate.status == Job.Status.COMPLETED and replicate.machine_id == web01.model.pk
    screenshot("grs-overview-up-to-date")

    # A second backup, not replicated yet; then the primary goes away.
    (source.parent / "later.txt").write_text("after the copy")
    second = wait_for_job(services.backup_start(machine=web01.model, user=vault_owner.user), web01)
    assert second.status == Job.Status.COMPLETED, second.error
    newest = RecoveryPoint.objects.filter(machine=web01.model).order_by("-created_at")[0]
    geo_storage.stop()

    page.goto(f"{agent_portal}/recover/?source={web01.model.pk}&target={web01.model.pk}")
    page.locator("#region-secondary").click()
    expect(page.locator("#region-help")).to_be_visible()
    screenshot("grs-recover-region", target=page.locator(".recovery-machines"))
    page.locator(".calendar-day.has-points").last.click()
    waiting = page.locator(f".not-replicated[data-point='{newest.snapshot_id}']")
    expect(waiting).to_contain_text("Not yet copied to the secondary region")
    page.locator(f"input[name=rp][value='{first.recovery_point.snapshot_id}']").check()
    browser = page.locator("#browser")
    path = "/"
    for part in source.parts[1:-1]:
        expect(browser.locator(f"table[data-path='{path}']")).to_be_visible(timeout=60_000)
        browser.locator("a.folder", has_text=f"{part}/").click()
        path = f"{path.rstrip('/')}/{part}"
    expect(browser.locator(f"table[data-path='{path}']")).to_be_visible()
    browser.get_by_label("Select projects").check()
    restored = web01.home / "restored"
    page.locator("input[name=folder]").fill(str(restored))
    page.locator("input[name=location][value=another]").check()
    screenshot("grs-recover-from-secondary")
    page.locator("[data-action=recover]").click()

    page.wait_for_url("**/jobs/*/")
    job = Job.objects.get(operation=Job.Operation.RESTORE)
    expect(page.locator(f"#job-{job.pk}-live [data-field=status]")).to_have_text(
        "Completed", timeout=60_000
    )
    expect(page.locator("[data-field=region]")).to_have_text(
        "Secondary region (Cross Region Restore)"
    )
    screenshot("grs-restore-completed")
    assert_same_tree(source, restored / str(source).lstrip("/"))
