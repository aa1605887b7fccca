"""The Backup center and alert webhooks in Chromium: an Owner adds a webhook to a vault and
sends a test that a real local receiver takes, opens Backup center from the left nav,
filters it by vault (htmx), acknowledges an alert and sees who did it; the worker's pass
then delivers the acknowledgement to the receiver, and the webhook page lists both."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.utils import timezone
from playwright.sync_api import expect

from agents import services as agent_services
from agents.models import OFFLINE_AFTER, Machine
from jobs import services
from jobs.models import Alert, Job
from jobs.services import webhooks
from tests.support.webhook_receiver import running_receiver
from vaults.models import Vault

pytestmark = pytest.mark.slow

SHOTS = Path("/tmp/shots-fleet")


@pytest.fixture(autouse=True)
def _receiver_allowed(settings):
    """The receiver listens on 127.0.0.1, which the portal refuses unless allowed; set before
    the live portal starts (its process inherits the settings)."""
    settings.HAVEN_WEBHOOK_ALLOWED_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"),)


def _vault(owner, name: str) -> Vault:
    return Vault.objects.create(
        subscription=owner.subscription,
        resource_group=owner.resource_group,
        name=name,
        location="West Europe",
        state=Vault.State.READY,
    )


def _failed_machine(vault: Vault, name: str) -> Alert:
    machine = Machine.objects.create(vault=vault, name=name, last_seen_at=timezone.now())
    Job.objects.create(
        vault=vault, machine=machine, operation=Job.Operation.BACKUP, status=Job.Status.FAILED
    )
    return services.alert_raise(
        vault=vault,
        machine=machine,
        kind=Alert.Kind.BACKUP_FAILED,
        severity=Alert.Severity.CRITICAL,
        message=f"Backup of {name} failed: disk full",
    )


def test_backup_center_acknowledge_and_webhook_delivery(
    signed_in_page, live_portal, portal_owner, screenshot
):
    page = signed_in_page
    prod = _vault(portal_owner, "vault-prod")
    dev = _vault(portal_owner, "vault-dev")
    alert = _failed_machine(prod, "web-01")
    _failed_machine(dev, "build-01")
    Machine.objects.create(vault=dev, name="idle-01")  # offline, no policy

    with running_receiver() as receiver:
        # The vault's Alert webhooks: add one, Send test, the delivery is listed.
        page.goto(f"{live_portal}/vaults/{prod.pk}/")
        page.get_by_role("navigation", name="Vault menu").get_by_role(
            "link", name="Alert webhooks"
        ).click()
        page.get_by_label("Name").fill("ops-receiver")
        page.get_by_label("URL").fill(receiver.url)
        page.get_by_label("Format").select_option(label="Generic JSON")
        page.get_by_label("Signing secret (optional)").fill("s3cret")
        page.get_by_role("button", name="Add webhook").click()
        expect(page.locator('tr[data-webhook="ops-receiver"]')).to_contain_text("HMAC-SHA256")
        page.locator('tr[data-webhook="ops-receiver"]').get_by_role(
            "button", name="Send test"
        ).click()
        test_row = page.locator('#webhook-deliveries tr[data-event="test"]')
        expect(test_row).to_contain_text("Delivered")
        expect(test_row).to_contain_text("200")
        assert json.loads(receiver.got[0]["body"])["event"] == "test"
        assert receiver.got[0]["headers"]["X-Haven-Signature"].startswith("sha256=")

        # Backup center from the left nav: every vault's machines and alerts.
        page.get_by_role("navigation", name="Main").get_by_role(
            "link", name="Backup center"
        ).click()
        expect(page.get_by_role("heading", name="Backup center")).to_be_visible()
        machines = page.locator("#fleet-machines tbody tr")
        expect(machines).to_have_count(3)
        expect(page.locator('li[data-state="failed"] .tile-count')).to_have_text("2")
        expect(page.locator('li[data-state="offline"] .tile-count')).to_have_text("1")

        # Filter by vault: htmx swaps the results and keeps the URL.
        page.get_by_label("Vault").select_option(label="vault-prod")
        expect(machines).to_have_count(1)
        expect(machines.first).to_contain_text("web-01")
        expect(page).to_have_url(re.compile(rf"/backup-center/\?.*vault={prod.pk}"))
        row = page.locator(f'#fleet-alerts tr[data-alert="{alert.pk}"]')
        expect(row).to_contain_text("Active")
        shots = [screenshot("backup-center", full_page=True)]

        # Acknowledge: the row says who, and the filter stays.
        row.get_by_role("button", name="Acknowledge").click()
        expect(row).to_have_attribute("data-alert-state", "acknowledged")
        expect(row.locator(".alert-state")).to_contain_text("Acknowledged by alice")
        expect(machines).to_have_count(1)
        shots.append(screenshot("backup-center-acknowledged", full_page=True))

        # The worker's pass sends the acknowledgement; the webhook page lists it.
        assert webhooks.webhooks_send_due()["sent"] == 1
        body = json.loads(receiver.got[-1]["body"])
        assert body["event"] == "alert.acknowledged"
        assert body["alert"]["acknowledged_by"] == "alice"
        page.goto(f"{live_portal}/backup-center/vaults/{prod.pk}/webhooks/")
        ack_row = page.locator('#webhook-deliveries tr[data-event="alert.acknowledged"]')
        expect(ack_row).to_contain_text("Delivered")
        shots.append(screenshot("alert-webhooks", full_page=True))
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{live_portal}/backup-center/?show=all")
        expect(page.locator("#fleet-machines tbody tr")).to_have_count(3)
        shots.append(screenshot("backup-center-phone", full_page=True))

    SHOTS.mkdir(parents=True, exist_ok=True)
    for shot in shots:
        shutil.copy(shot, SHOTS / shot.name)


def test_the_backup_center_shows_changes_as_they_happen_without_a_reload(
    signed_in_page, live_portal, portal_owner
):
    page = signed_in_page
    shown, other = _vault(portal_owner, "vault-live"), _vault(portal_owner, "vault-other")
    web01 = Machine.objects.create(vault=shown, name="web-01", last_seen_at=timezone.now())
    Job.objects.create(
        vault=shown, machine=web01, operation=Job.Operation.BACKUP, status=Job.Status.COMPLETED
    )
    app01 = Machine.objects.create(vault=shown, name="app-01")  # never seen: Offline
    Machine.objects.create(vault=other, name="other-01", last_seen_at=timezone.now())

    page.goto(f"{live_portal}/backup-center/?vault={shown.pk}")
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    rows = page.locator("#fleet-machines tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="web-01")).to_have_attribute("data-state", "warning")  # no policy
    expect(rows.filter(has_text="app-01")).to_have_attribute("data-state", "offline")
    page.evaluate("window.notReloaded = true")

    # A backup fails and raises its alert (the portal's worker would): the row, the tiles
    # and the alerts change in place.
    Job.objects.create(
        vault=shown, machine=web01, operation=Job.Operation.BACKUP, status=Job.Status.FAILED
    )
    services.alert_raise(
        vault=shown,
        machine=web01,
        kind=Alert.Kind.BACKUP_FAILED,
        severity=Alert.Severity.CRITICAL,
        message="Backup of web-01 failed: disk full",
    )
    expect(rows.filter(has_text="web-01")).to_have_attribute("data-state", "failed")
    expect(page.locator("#fleet-alerts")).to_contain_text("Backup of web-01 failed: disk full")
    expect(page.locator(".tile[data-state=failed] .tile-count")).to_have_text("1")

    # A machine comes online (its first heart-beat): Offline no longer.
    agent_services.machine_heartbeat(machine=app01)
    expect(rows.filter(has_text="app-01")).not_to_have_attribute("data-state", "offline")

    expect(rows.filter(has_text="app-01")).to_have_attribute("data-state", "warning")

    # It stops reporting: nothing is written; the worker's sweep (every 30 s) finds that its
    # last heart-beat grew older than OFFLINE_AFTER, and the page shows it Offline again.
    cache.delete(agent_services.OFFLINE_SWEPT_KEY)  # a first sweep: it looks back one period
    quiet = timezone.now() - OFFLINE_AFTER - timedelta(seconds=5)
    Machine.objects.filter(pk=app01.pk).update(last_seen_at=quiet)
    assert agent_services.machines_offline_announce() == [shown.subscription_id]
    expect(rows.filter(has_text="app-01")).to_have_attribute("data-state", "offline")

    # Still the same page, with its filter: the other vault's machine is not listed.
    assert page.evaluate("window.notReloaded") is True
    expect(rows).to_have_count(2)
    assert page.url.endswith(f"/backup-center/?vault={shown.pk}")


def test_a_refresh_does_not_swallow_the_filter_just_chosen(
    signed_in_page, live_portal, portal_owner
):
    """A live refresh due just as the user picks a filter (the socket opening, or a push)
    waits for the user's request: the results and the URL both follow the choice."""
    page = signed_in_page
    prod, rows = _two_vaults_live(page, live_portal, portal_owner)

    # The choice and a socket (re)opening in the same instant.
    page.evaluate(
        """(vault) => {
            const select = document.querySelector('#backup-center-filters select[name=vault]');
            select.value = vault;
            select.dispatchEvent(new Event('change', {bubbles: true}));
            document.dispatchEvent(new CustomEvent('htmx:wsOpen'));
        }""",
        str(prod.pk),
    )
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("web-01")
    expect(page).to_have_url(re.compile(rf"/backup-center/\?.*vault={prod.pk}"))


def test_a_filter_changed_before_the_scripts_ran_is_shown_and_put_in_the_address(
    signed_in_page, live_portal, portal_owner
):
    """A filter picked before htmx listened (no change event seen) is applied by the next
    refresh, and the address follows it, so a reload shows what the page shows."""
    page = signed_in_page
    prod, rows = _two_vaults_live(page, live_portal, portal_owner)

    # The value changes with no event (as before the scripts ran); then the socket opens.
    page.evaluate(
        """(vault) => {
            document.querySelector('#backup-center-filters select[name=vault]').value = vault;
            document.dispatchEvent(new CustomEvent('htmx:wsOpen'));
        }""",
        str(prod.pk),
    )
    expect(rows).to_have_count(1)
    expect(page).to_have_url(re.compile(rf"/backup-center/\?.*vault={prod.pk}"))
    page.reload()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("web-01")


def _two_vaults_live(page, live_portal, portal_owner):
    """A machine in each of two vaults, the Backup center open with its socket, and the
    next refresh due at once. (The first vault, the machine rows' locator.)"""
    prod, dev = _vault(portal_owner, "vault-prod"), _vault(portal_owner, "vault-dev")
    Machine.objects.create(vault=prod, name="web-01", last_seen_at=timezone.now())
    Machine.objects.create(vault=dev, name="build-01", last_seen_at=timezone.now())
    page.goto(f"{live_portal}/backup-center/")
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    rows = page.locator("#fleet-machines tbody tr")
    expect(rows).to_have_count(2)
    page.wait_for_timeout(1200)  # past the refreshes' one-a-second gap: the next one is due at once
    return prod, rows


def test_back_to_an_earlier_filter_shows_it_in_the_form_and_a_refresh_keeps_it(
    signed_in_page, live_portal, portal_owner
):
    """Back to a page htmx kept: the form shows the filters of its address (its copy holds
    the form as first rendered), and the next live refresh fetches those, not the first."""
    page = signed_in_page
    prod, rows = _two_vaults_live(page, live_portal, portal_owner)
    vault = page.locator("#backup-center-filters select[name=vault]")
    vault.select_option(label="vault-prod")
    expect(page).to_have_url(re.compile(rf"vault={prod.pk}"))
    vault.select_option(label="vault-dev")
    expect(rows.first).to_contain_text("build-01")

    page.go_back()
    expect(page).to_have_url(re.compile(rf"vault={prod.pk}"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("web-01")
    expect(vault).to_have_value(str(prod.pk))

    page.wait_for_timeout(1200)  # past the refreshes' one-a-second gap
    page.evaluate("document.dispatchEvent(new CustomEvent('htmx:wsOpen'))")
    page.wait_for_timeout(1000)
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("web-01")
    expect(page).to_have_url(re.compile(rf"vault={prod.pk}"))
