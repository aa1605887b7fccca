"""The day a server dies (issue 14, item 1), as a user would live it, with real agents on the
real servers in the servers pass (PostgreSQL, Redis, Azurite).

app-01 backs up a folder. Then it is destroyed: its worker is killed and its agent's config
and cache are deleted; only its encryption passphrase survives, kept elsewhere as the portal
tells people to. Either

1. someone unregisters app-01 in the portal and a fresh machine, standby-01, registers; or
2. a fresh machine registers under app-01's name with ``--replace``.

Either way app-01's latest recovery point is restored onto the new machine byte for byte,
from the browser (Recover Data lists app-01 as unregistered or replaced) and from the new
machine's command line (``--from-machine app-01`` with freshly downloaded vault
credentials and app-01's passphrase). A wrong passphrase is refused by name first, before
anything is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e._agent_support import download_credentials
from tests.e2e.conftest import sign_in_with_cookie
from tests.e2e.test_recovery import assert_same_tree, seed_tree, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture
def source_folder(tmp_path_factory):
    root = Path(tmp_path_factory.mktemp("dr", numbered=True))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def back_up_and_destroy(agent_machines, owner, source_folder: Path, safe: Path):
    """app-01 backs up ``source_folder/projects``, then dies; its passphrase is in ``safe``."""
    from jobs import policy_rules, services
    from jobs.models import Job

    app = agent_machines.register("app-01", owner.credentials)
    projects = source_folder / "projects"
    seed_tree(projects)
    spec = policy_rules.default_spec()
    spec["items"] = [str(projects)]
    services.policy_save(machine=app.model, spec=spec, user=owner.user)
    backup = wait_for_job(services.backup_start(machine=app.model, user=owner.user), app)
    assert backup.status == Job.Status.COMPLETED, backup.error
    safe.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(app.passphrase_file, safe)
    app.kill()
    shutil.rmtree(app.home / "haven-agent-config")
    shutil.rmtree(app.home / "cache")
    return app, projects


def cli_restore(machine, portal, owner, projects: Path, safe: Path, *, expect_state: str):
    """On ``machine``: list app-01's points, refuse a wrong passphrase, restore the latest."""
    fresh = download_credentials(portal, owner.user, owner.vault, machine.home / "downloads")
    origin = ("--from-machine", "app-01", "--vault-credentials", fresh)
    listed = machine.ok("recovery-points", *origin, "--passphrase-file", safe)
    assert f"Recovery points of app-01 ({expect_state}" in listed, listed

    wrong = machine.home / "wrong-passphrase.txt"
    wrong.write_text("not app-01's passphrase\n")
    target = machine.home / "restored-cli"
    refused = machine.run("restore", "latest", projects, *origin, "--passphrase-file", wrong,
                          "--target", target)  # fmt: skip
    assert refused.returncode == 1
    assert "passphrase does not open the backups of 'app-01'" in refused.stderr
    assert not target.exists()

    machine.ok(
        "restore", "latest", projects, *origin, "--passphrase-file", safe, "--target", target
    )
    assert_same_tree(projects, target / str(projects).lstrip("/"))
    # For the portal's restore: the passphrase typed (here: from the safe copy) on the machine.
    said = machine.ok("recovery-passphrase", *origin, "--passphrase-file", safe)
    assert "opens app-01" in said


def portal_restore(page, portal, owner, source_choice, target_label, projects, target, shot):
    """Recover Data in Chromium: the gone app-01, onto ``target_label``, into ``target``."""
    from jobs.models import Job

    page.goto(f"{portal}/recover/?vault={owner.vault.pk}")
    choice = page.locator("label.recovery-choice", has_text=source_choice)
    expect(choice).to_have_count(1)
    shot(f"{shot.prefix}-sources")
    choice.locator("input").check()
    page.get_by_role("button", name="Next").click()
    expect(page.locator("[data-field=gone]")).to_contain_text(source_choice)
    page.get_by_label(target_label).check()
    page.get_by_role("button", name="Next").click()
    expect(page.locator("[data-field=source] [data-field=gone]")).to_contain_text(source_choice)

    page.locator("input[name=rp]").check()  # its one recovery point: the latest
    browser = page.locator("#browser")
    path = "/"
    for part in projects.parts[1:-1]:
        expect(browser.locator(f"table[data-path='{path}']")).to_be_visible()
        browser.locator("a.folder", has_text=f"{part}/").click()
        path = f"{path.rstrip('/')}/{part}"
    expect(browser.locator(f"table[data-path='{path}']")).to_be_visible()
    browser.get_by_label("Select projects").check()
    page.locator("input[name=folder]").fill(str(target))
    page.locator("input[name=location][value=another]").check()
    shot(f"{shot.prefix}-wizard")
    page.locator("[data-action=recover]").click()
    page.wait_for_url("**/jobs/*/")
    job = Job.objects.get(operation=Job.Operation.RESTORE)
    status = page.locator(f"#job-{job.pk}-live [data-field=status]")
    expect(status).to_have_text("Completed", timeout=60_000)
    assert_same_tree(projects, target / str(projects).lstrip("/"))
    job.refresh_from_db()
    assert job.details["source_name"] == "app-01"
    return job


@pytest.fixture
def shot(screenshot):
    def take(name):
        return screenshot(name, full_page=True)

    take.prefix = ""
    return take


def test_a_dead_machine_unregistered_in_the_portal_is_restored_onto_a_fresh_one(
    agent_portal, vault_owner, agent_machines, source_folder, tmp_path, page, shot
):
    safe = tmp_path / "password-manager" / "app-01.txt"
    app, projects = back_up_and_destroy(agent_machines, vault_owner, source_folder, safe)

    page.set_default_timeout(20_000)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)
    page.goto(f"{agent_portal}/machines/{app.machine_id}/unregister/")
    page.locator("#id_confirm_name").fill("app-01")
    page.get_by_role("button", name="Unregister").click()
    page.wait_for_url(f"**/machines/vault/{vault_owner.vault.pk}/")
    app.model.refresh_from_db()
    assert app.model.unregistered_at is not None

    standby = agent_machines.register("standby-01", vault_owner.credentials)
    cli_restore(standby, agent_portal, vault_owner, projects, safe, expect_state="Unregistered on")

    shot.prefix = "dr-unregistered"
    portal_restore(page, agent_portal, vault_owner, "Unregistered on",
                   "Another machine: standby-01", projects, standby.home / "restored-portal",
                   shot)  # fmt: skip
    # The gone machine's page of points says its last one is kept whatever its age.
    page.goto(f"{agent_portal}/jobs/machines/{app.machine_id}/recovery-points/")
    expect(page.locator("[data-field=keeps-last-point]")).to_contain_text("whatever its age")
    shot("dr-unregistered-points")


def test_a_dead_machine_replaced_under_its_name_is_restored_onto_its_replacement(
    agent_portal, vault_owner, agent_machines, source_folder, tmp_path, page, shot
):
    safe = tmp_path / "password-manager" / "app-01.txt"
    app, projects = back_up_and_destroy(agent_machines, vault_owner, source_folder, safe)

    # A fresh install registers as app-01 again; --replace unregisters the old one.
    new = agent_machines.register(
        "app-01", vault_owner.credentials, home_name="app-01-new", replace=True
    )
    old = app.model
    assert old.unregistered_at is not None and str(old.replaced_by_id) == new.machine_id
    # On the new app-01, "app-01" means the machine it replaced.
    cli_restore(new, agent_portal, vault_owner, projects, safe, expect_state="Replaced by app-01")

    page.set_default_timeout(20_000)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)
    shot.prefix = "dr-replaced"
    portal_restore(page, agent_portal, vault_owner, "Replaced by app-01",
                   "Another machine: app-01", projects, new.home / "restored-portal",
                   shot)  # fmt: skip
