"""Recover Data in Chromium, across machines, with real agents: web-01 backs up a folder;
web-02, registered to the same vault and told web-01's passphrase on the machine
(``haven-agent recovery-passphrase``, docs/restore.md), browses web-01's recovery point in
the wizard and restores the folder into another folder of its own. The Restore job
completes live on its page, and the restored tree equals the source byte for byte, with the
same modes."""

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
    from jobs import policy_rules, services
    from jobs.models import Job

    web01 = agent_machines.register("web-01", vault_owner.credentials)
    web02 = agent_machines.register("web-02", vault_owner.credentials)
    projects = source_folder / "projects"
    seed_tree(projects)
    (source_folder / "not-selected.txt").write_text("stays behind")
    spec = policy_rules.default_spec()
    spec["items"] = [str(source_folder)]
    services.policy_save(machine=web01.model, spec=spec, user=vault_owner.user)
    backup = wait_for_job(services.backup_start(machine=web01.model, user=vault_owner.user), web01)
    assert backup.status == Job.Status.COMPLETED, backup.error

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

    page.set_default_timeout(20_000)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)
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
        expect(browser.locator(f"table[data-path='{path}']")).to_be_visible()
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
