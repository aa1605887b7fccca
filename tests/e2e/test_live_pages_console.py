"""Live pushes reach pages that show only some of what they carry: the console stays clean.

A push to a vault's watchers carries every fragment any of their pages shows (the
deployment's status, the vault's status pill, the alert summary, a job's row); a page swaps
in those it shows and leaves the rest, without htmx's "oobErrorNoTarget" error."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.slow


def _console_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_the_deployment_page_takes_the_vaults_pushes_without_console_errors(
    signed_in_page, live_portal, portal_owner, screenshot
):
    from jobs.services.live import alerts_publish
    from vaults import services
    from vaults.models import Vault

    page = signed_in_page
    errors = _console_errors(page)
    vault = Vault.objects.create(
        subscription=portal_owner.subscription, resource_group=portal_owner.resource_group,
        name="vault-one", location="West Europe", state=Vault.State.DEPLOYING,
    )  # fmt: skip
    page.goto(f"{live_portal}/vaults/{vault.pk}/deployment/")
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    status = page.locator("#deployment-status")
    expect(status).to_contain_text("Deployment is in progress")

    Vault.objects.filter(pk=vault.pk).update(state=Vault.State.READY)
    vault.refresh_from_db()
    services._push_vault(vault)  # what the deployment's end sends
    expect(status).to_contain_text("Your deployment is complete")
    alerts_publish(vault=vault)  # another push to the vault's watchers
    page.wait_for_timeout(500)
    screenshot("vault-deployment-pushed")
    assert errors == []

    # The overview, the other page of the vault's watchers, takes the same pushes.
    page.goto(f"{live_portal}/vaults/{vault.pk}/")
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    services._push_vault(vault)
    alerts_publish(vault=vault)
    page.wait_for_timeout(500)
    assert errors == []
