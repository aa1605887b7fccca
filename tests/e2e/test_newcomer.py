"""A newcomer's first minutes in Chromium: the administrator `make run` printed, with no
subscription yet, goes straight to Recovery Services vaults › Create, creates a subscription
on that page, comes back to the vault form with it selected, and ends with the vault
deployed — even when the deployment's push is lost because the socket was not connected
(the page fetches its live block again when the socket opens)."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.e2e._vault_support import e2e_storage, portal_worker  # noqa: F401 - fixtures
from tests.e2e.conftest import make_user, sign_in_with_cookie

pytestmark = pytest.mark.slow


def test_an_admin_with_no_subscription_creates_one_from_the_vault_page_and_then_the_vault(
    e2e_storage,  # noqa: F811 - before the live portal starts
    live_portal,
    page,
    portal_worker,  # noqa: F811
    screenshot,
):
    from vaults.models import Vault

    admin = make_user("admin", is_superuser=True, is_staff=True)
    page.set_default_timeout(10_000)
    sign_in_with_cookie(page, live_portal, admin)
    page.goto(live_portal + "/vaults/")
    page.locator("#create-vault").click()

    form = page.locator("#first-subscription-form")
    expect(form).to_contain_text("First, create a subscription")
    screenshot("newcomer-vault-create-first-subscription")
    page.get_by_label("Subscription name").fill("Production")
    page.locator("#create-first-subscription").click()

    # Back on the vault form, the new subscription chosen; a new resource group made here too.
    expect(page).to_have_url(re.compile(r"/vaults/create/\?subscription="))
    expect(page.locator("#id_subscription option:checked")).to_have_text("Production")
    page.locator("#id_resource_group").select_option(label="+ Create new")
    page.get_by_label("New resource group name").fill("backup-rg")
    page.get_by_label("Vault name").fill("vault-one")
    expect(page.locator("#name-check")).to_contain_text("vault-one is available")
    page.locator("#wizard-review").click()
    expect(page.get_by_text("Validation passed")).to_be_visible()

    # The deployment finishes while the page's socket is down: its push reaches no one.
    held: list = []

    def hold(socket):  # answered by no server until the test lets sockets through
        if held and held[0] == "release":
            socket.connect_to_server()
        else:
            held.append(socket)

    page.route_web_socket(re.compile(r"/ws/live/"), hold)
    page.locator("#wizard-create").click()
    status = page.locator("#deployment-status")
    expect(status).to_contain_text("Deployment is in progress")
    vault = Vault.objects.get(name="vault-one")
    assert vault.subscription.name == "Production" and vault.resource_group.name == "backup-rg"
    portal_worker.start()
    deadline = time.monotonic() + 60
    while Vault.objects.get(pk=vault.pk).state != Vault.State.READY:
        assert time.monotonic() < deadline, "the worker did not deploy the vault in 60 s"
        time.sleep(0.1)
    expect(status).to_contain_text("Deployment is in progress")  # nothing arrived

    # The socket drops as in a server restart (1012) and reconnects, to the real server now:
    # the page fetches its live block again.
    sockets = list(held)
    held[:] = ["release"]
    sockets[-1].close(code=1012, reason="restarting")
    expect(status).to_contain_text("Your deployment is complete", timeout=20_000)
    page.locator("#go-to-resource").click()
    expect(page).to_have_url(re.compile(rf"/vaults/{vault.pk}/$"))
