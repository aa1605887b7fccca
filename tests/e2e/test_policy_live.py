"""The backup policy page in Chromium: the agent confirming a saved policy reaches the open
page without a reload."""

from __future__ import annotations

from playwright.sync_api import expect


def test_the_policy_page_turns_applied_when_the_agent_confirms(
    signed_in_page, live_portal, portal_owner
):
    """After Save policy the page said "Not applied … version 3 was sent and is not confirmed
    yet", and kept saying it, the agent's confirmation a second later shown only on reload."""
    from django.utils import timezone

    from jobs import services
    from jobs.models import BackupPolicy
    from tests.support import builders

    page = signed_in_page
    vault = builders.make_vault(resource_group=portal_owner.resource_group, name="vault-prod")
    machine = builders.make_machine(vault=vault, name="web-01", last_seen_at=timezone.now())
    policy = BackupPolicy.objects.create(
        machine=machine,
        items=["/srv"],
        frequency="daily",
        times=["00:00"],
        retention={"daily": {"days": 7}},
        spec_hash="the saved spec's hash",
    )
    for path in ("policy", "properties/throttling"):
        page.goto(f"{live_portal}/jobs/machines/{machine.pk}/{path}/")
        expect(page.locator("body")).to_have_attribute("data-live", "open")
        expect(page.locator(".policy-version")).to_contain_text("Not applied")
        page.evaluate("window.__sameDocument = true")

        services.policy_applied(policy=policy, version=policy.version, spec_hash=policy.spec_hash)

        expect(page.locator(".policy-version")).to_contain_text("Applied by the agent")
        assert page.evaluate("window.__sameDocument") is True
        BackupPolicy.objects.filter(pk=policy.pk).update(applied_hash="", applied_version=None)
