"""Recover Data in Chromium, across machines, with real agents: web-01's policy, saved in the
editor with System State checked, backs up a folder and the machine's configuration (Back up
now); web-02, registered to the same vault and told web-01's passphrase on the machine
(``haven-agent recovery-passphrase``, docs/restore.md), browses web-01's recovery point in
the wizard and restores the folder into another folder of its own, then Recover Data ›
System State into a folder. Each Restore job completes live on its page, and each restored
tree equals its source byte for byte, with the same modes."""

from __future__ import annotations

import filecmp
import os
import random
import shutil
import stat
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e._agent_support import download_credentials
from tests.e2e.conftest import sign_in_with_cookie

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def seed_tree(root: Path, *, seed: int = 7) -> None:
    """Folders and files of several sizes and modes, from a fixed seed."""
    rng = random.Random(seed)
    layout = {
        "reports/2026/q3 summary.pdf": (300_000, 0o644),
        "reports/2026/q4-draft.docx": (120_000, 0o600),
        "reports/README": (1_200, 0o444),
        "scripts/deploy.sh": (4_000, 0o755),
        "scripts/empty.conf": (0, 0o640),
        "data/blob.bin": (1_500_000, 0o644),
        "data/nested/deeper/small.txt": (17, 0o664),
        "café/naïve résumé.txt": (2_048, 0o644),
    }
    for name, (size, mode) in layout.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        path.chmod(mode)
    (root / "scripts").chmod(0o750)
    (root / "data" / "nested" / "deeper").chmod(0o700)


def assert_same_tree(source: Path, restored: Path) -> None:
    """Every file byte for byte (filecmp, shallow=False), every mode, nothing more or less."""

    def listing(root: Path) -> dict[str, os.stat_result]:
        out = {}
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder) / name
                out[str(path.relative_to(root))] = path.lstat()
        return out

    want, got = listing(source), listing(restored)
    assert sorted(got) == sorted(want)
    for name, info in want.items():
        there = got[name]
        assert stat.S_IFMT(there.st_mode) == stat.S_IFMT(info.st_mode), name
        assert stat.S_IMODE(there.st_mode) == stat.S_IMODE(info.st_mode), (
            f"{name}: mode {stat.S_IMODE(there.st_mode):o}, not {stat.S_IMODE(info.st_mode):o}"
        )
        if stat.S_ISREG(info.st_mode):
            assert filecmp.cmp(source / name, restored / name, shallow=False), name
            assert int(there.st_mtime) == int(info.st_mtime), f"{name}: modified time"


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


@pytest.fixture
def source_folder(tmp_path_factory):
    """A short path, so the wizard has few folders to open on the way down."""
    root = Path(tmp_path_factory.mktemp("src", numbered=True))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_restore_a_folder_onto_another_machine_of_the_vault(
    agent_portal, vault_owner, agent_machines, source_folder, page, screenshot
):
    from agents.runtime.jobs.backup import SYSTEM_STATE_STAGING
    from jobs.models import BackupPolicy, Job

    web01 = agent_machines.register("web-01", vault_owner.credentials)
    web02 = agent_machines.register("web-02", vault_owner.credentials)
    projects = source_folder / "projects"
    seed_tree(projects)
    (source_folder / "not-selected.txt").write_text("stays behind")

    page.set_default_timeout(20_000)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)
    # The policy editor: the folder, and System State.
    page.goto(f"{agent_portal}/jobs/machines/{web01.model.pk}/policy/")
    page.locator("#items").fill(str(source_folder))
    page.locator("#system_state").check()
    screenshot("policy-system-state")
    page.locator("[data-action=save-policy]").click()
    expect(page.locator("#system_state")).to_be_checked()
    policy = BackupPolicy.objects.get(machine=web01.model)
    assert policy.system_state and policy.items == [str(source_folder)]
    # Back up now: System State is collected first; this machine has no sfdisk, and says so.
    page.goto(f"{agent_portal}/jobs/machines/{web01.model.pk}/backup-now/")
    page.locator("[data-action=back-up]").click()
    page.wait_for_url("**/jobs/*/")
    backup = wait_for_job(Job.objects.get(machine=web01.model, operation=Job.Operation.BACKUP),
                          web01)  # fmt: skip
    assert backup.status in (Job.Status.COMPLETED, Job.Status.WARNING), backup.error
    if backup.status == Job.Status.WARNING:
        assert all(w["path"].startswith("System State: ") for w in backup.warnings), backup.warnings
    staged = web01.home / "cache" / SYSTEM_STATE_STAGING
    assert (staged / "README.md").exists() and (staged / "etc" / "hostname").exists()
    page.goto(f"{agent_portal}/jobs/machines/{web01.model.pk}/recovery-points/")
    expect(page.locator("tr[data-point]")).to_have_count(1)
    screenshot("recovery-points")

    # On web-02: web-01's passphrase, typed there (here: from a copy of web-01's file), with
    # vault credentials alice downloads for it: her say-so lets web-02 read web-01's backups.
    copy = web02.home / "secrets" / "web-01-passphrase.txt"
    shutil.copy(web01.passphrase_file, copy)
    refused = web02.run(
        "recovery-passphrase", "--from-machine", "web-01", "--passphrase-file", copy
    )
    assert refused.returncode == 1 and "--vault-credentials" in refused.stderr
    fresh = download_credentials(agent_portal, vault_owner.user, vault_owner.vault, web02.home)
    said = web02.ok(
        "recovery-passphrase", "--from-machine", "web-01", "--passphrase-file", copy,
        "--vault-credentials", fresh,
    )  # fmt: skip
    assert "opens web-01's backups" in said

    page.goto(agent_portal + "/recover/")
    page.get_by_label("web-01").check()
    page.get_by_role("button", name="Next").click()
    page.get_by_label("Another machine: web-02").check()
    page.get_by_role("button", name="Next").click()
    expect(page.locator("[data-field=target]")).to_contain_text("web-02")

    # The recovery point: the day with points is open; its only time.
    page.locator("input[name=rp]").check()
    browser = page.locator("#browser")
    path = "/"
    for part in projects.parts[1:-1]:
        # (the first answer waits for web-02 to derive web-01's key: slow on a busy machine)
        expect(browser.locator(f"table[data-path='{path}']")).to_be_visible(timeout=20_000)
        browser.locator("a.folder", has_text=f"{part}/").click()
        path = f"{path.rstrip('/')}/{part}"
    expect(browser.locator(f"table[data-path='{path}']")).to_be_visible()
    expect(browser.locator("tr[data-name='not-selected.txt']")).to_be_visible()
    browser.get_by_label("Select projects").check()
    expect(page.locator("[data-field=selected-count]")).to_have_text("1")

    restored = web02.home / "restored"
    page.locator("input[name=folder]").fill(str(restored))
    page.locator("input[name=location][value=another]").check()
    screenshot("recovery-wizard-another-machine")
    page.locator("[data-action=recover]").click()

    page.wait_for_url("**/jobs/*/")
    job = Job.objects.get(operation=Job.Operation.RESTORE)
    assert page.url.endswith(f"/jobs/{job.pk}/") and job.machine_id == web02.model.pk
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    page.evaluate("window.__havenSamePage = true")
    status = page.locator(f"#job-{job.pk}-live [data-field=status]")
    expect(status).to_have_text("Completed", timeout=60_000)
    assert page.evaluate("window.__havenSamePage") is True, "the job page was reloaded"
    screenshot("recovery-job-completed")

    # Items keep their full path under the chosen folder.
    assert_same_tree(projects, restored / str(projects).lstrip("/"))
    assert not (restored / str(source_folder).lstrip("/") / "not-selected.txt").exists()
    job.refresh_from_db()
    assert job.details["source_name"] == "web-01" and job.details["location"] == "another"

    # Recover Data › System State, into a folder on web-02: never the original location.
    page.goto(agent_portal + f"/recover/{web01.model.pk}/to/{web02.model.pk}/")
    page.locator("input[name=rp]").check()
    page.locator("input[name=recover_mode][value=system_state]").check()
    expect(page.locator("[data-field=selected-count]")).to_have_text("1")
    expect(page.locator("#selection")).to_contain_text("System State")
    expect(page.locator("input[name=location][value=original]")).to_be_disabled()
    expect(page.locator("#system-state-note")).to_be_visible()
    state_folder = web02.home / "system-state-restored"
    page.locator("input[name=folder]").fill(str(state_folder))
    screenshot("recovery-wizard-system-state")
    page.locator("[data-action=recover]").click()
    page.wait_for_url("**/jobs/*/")
    job = Job.objects.filter(operation=Job.Operation.RESTORE).order_by("-created_at").first()
    assert job.details.get("system_state") is True
    expect(page.locator(f"#job-{job.pk}-live [data-field=items]")).to_have_text("System State")
    expect(page.locator(f"#job-{job.pk}-live [data-field=status]")).to_have_text(
        "Completed", timeout=60_000
    )
    screenshot("recovery-system-state-completed")
    assert_same_tree(staged, state_folder / "system-state")
    assert "dpkg --set-selections" in (state_folder / "system-state" / "README.md").read_text()
