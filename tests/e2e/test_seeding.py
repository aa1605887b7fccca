"""Offline seeding in Chromium with a real agent and a real portal worker: a machine whose
policy says Offline, with a seed staging folder, waits for its seed disk; Back up now has the
agent write the first backup to that folder (an Offline backup to disk job: nothing is
uploaded); the owner imports it on the machine's Seeding page (an Import job the portal's
worker runs, shown live); then Back up now goes over the network and uploads under 1% of
the data, because the seeded packs are reused."""

from __future__ import annotations

import json
import random
import time

import pytest
from playwright.sync_api import expect

from tests.e2e._vault_support import PortalWorker
from tests.e2e.conftest import sign_in_with_cookie

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

DATA_BYTES = 4 * 1024 * 1024


@pytest.fixture
def seed_disks(settings, tmp_path):
    """The portal's import root. Must come before ``agent_portal`` in the test's arguments:
    the forked portal copies the settings as they are when it starts."""
    root = tmp_path / "seed-disks"
    root.mkdir()
    settings.HAVEN_SEED_IMPORT_ROOT = str(root)
    return root


def _write_files(root) -> None:
    rng = random.Random(15)
    for i in range(16):
        folder = root / f"dir-{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file-{i:02}.bin").write_bytes(rng.randbytes(DATA_BYTES // 16))


def _until(condition, what, timeout: float = 60) -> None:
    """Wait for ``condition``; ``what`` (text, or a function giving it at the timeout, e.g.
    with a log) says what for."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.2)


def test_an_offline_seeded_machine_backs_up_online_uploading_almost_nothing(
    seed_disks,
    agent_portal,
    vault_owner,
    agent_machines,
    page,
    screenshot,
    settings,
    monkeypatch,
    redis_url,
    tmp_path,
):
    from jobs import policy_rules, services
    from jobs.models import BackupPolicy, Job, RecoveryPoint
    from jobs.services.pruning import repository_store

    agent = agent_machines.register("web-01", vault_owner.credentials)
    machine = agent.model
    data = agent.home / "data"
    _write_files(data)
    spec = policy_rules.default_spec()
    # the seed staging folder named in the policy: Back up now has the agent write there
    spec.update(
        items=[str(data)], initial_backup="offline", seed_staging=str(seed_disks / "web-01")
    )
    policy = services.policy_save(machine=machine, spec=spec, user=vault_owner.user)
    _until(
        lambda: BackupPolicy.objects.get(pk=policy.pk).applied_hash == policy.spec_hash,
        "the agent to apply the policy",
    )
    page.set_default_timeout(15_000)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)
    page.goto(f"{agent_portal}/machines/{machine.pk}/")
    expect(page.locator("[data-field=seed-state]")).to_contain_text("Waiting for the seed disk")
    screenshot("seed-machine-waiting")

    # Back up now: the agent writes the first backup to the staging folder (the disk,
    # mounted on the machine), uploading nothing.
    staging = seed_disks / "web-01"
    staging.mkdir()
    page.goto(f"{agent_portal}/jobs/machines/{machine.pk}/backup-now/")
    expect(page.locator("[data-field=seed-folder]")).to_have_text(str(staging))
    screenshot("seed-backup-now")
    page.locator("[data-action=back-up]").click()
    page.wait_for_url("**/jobs/*/")
    export = Job.objects.get(machine=machine, operation=Job.Operation.SEED_EXPORT)
    _until(
        lambda: Job.objects.filter(pk=export.pk, status__in=Job.FINISHED).exists(),
        lambda: f"the offline backup to end:\n{agent.log_text()[-4000:]}",
        timeout=120,
    )
    written = page.locator(f"#job-{export.pk}-live [data-field=seed-written]")
    expect(written).to_contain_text(f"Seed written to {staging} on web-01 at")
    expect(written).to_contain_text("ship the disk and import it")
    screenshot("seed-export-job")
    export.refresh_from_db()
    assert export.status == Job.Status.COMPLETED, export.error
    header = json.loads((staging / "haven-seed.json").read_text())
    assert export.details["seed"]["recovery_point_id"] == header["recovery_point_id"]
    assert export.details["seed"]["logical_bytes"] == DATA_BYTES
    with repository_store(machine) as store:  # nothing went to the vault's storage
        held = {b.name for b in store.list("")}
    assert held and all(n == "config" or n.startswith("keys/") for n in held), held
    page.goto(f"{agent_portal}/jobs/machines/{machine.pk}/seeding/")
    expect(page.locator("[data-field=seed-state]")).to_contain_text("Seed written")
    monkeypatch.setenv("REDIS_URL", redis_url)  # the worker consumes where the portal sends
    worker = PortalWorker(agent_portal, settings, tmp_path / "portal-worker.log")
    worker.start()
    try:
        page.goto(f"{agent_portal}/jobs/machines/{machine.pk}/seeding/")
        page.fill("#seed-path", "../outside")
        page.locator("[data-action=import-seed]").click()
        expect(page.locator("[data-field=seed-error]")).to_contain_text("'..'")
        page.fill("#seed-path", "web-01")
        screenshot("seed-import-form")
        page.locator("[data-action=import-seed]").click()
        page.wait_for_url("**/jobs/*/")
        job = Job.objects.get(machine=machine, operation=Job.Operation.IMPORT)
        _until(
            lambda: Job.objects.filter(pk=job.pk, status=Job.Status.COMPLETED).exists(),
            f"the import to complete:\n{worker.log_path.read_text()[-3000:]}",
            timeout=90,
        )
        # In the embedded pass the worker's pushes (Redis channel layer) cannot reach this
        # portal (in-memory layer): the page is reloaded to show the stored state.
        page.reload()
        status = page.locator(f"#job-{job.pk}-live [data-field=status]")
        expect(status).to_have_text("Completed")
        screenshot("seed-import-job")
    finally:
        worker.stop()
    point = RecoveryPoint.objects.get(machine=machine)
    assert point.job_id == job.pk and point.logical_bytes == DATA_BYTES

    page.goto(f"{agent_portal}/machines/{machine.pk}/")
    expect(page.locator("[data-field=seed-state]")).to_contain_text("Imported")
    screenshot("seed-machine-imported")

    with repository_store(machine) as store:
        before = {b.name for b in store.list("")}
    page.goto(f"{agent_portal}/jobs/machines/{machine.pk}/backup-now/")
    page.locator("[data-action=back-up]").click()
    page.wait_for_url("**/jobs/*/")
    backup = Job.objects.get(machine=machine, operation=Job.Operation.BACKUP)
    expect(page.locator(f"#job-{backup.pk}-live [data-field=status]")).to_have_text(
        "Completed", timeout=90_000
    )
    screenshot("seed-online-backup")
    with repository_store(machine) as store:
        uploaded = sum(b.size for b in store.list("") if b.name not in before)
    assert uploaded < 0.01 * DATA_BYTES, uploaded
    backup.refresh_from_db()
    assert backup.bytes_transferred < 0.01 * DATA_BYTES, backup.bytes_transferred
    assert RecoveryPoint.objects.filter(machine=machine).count() == 2
