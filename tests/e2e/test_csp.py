"""The strict Content-Security-Policy holds on the main pages: nothing inline, no eval,
and htmx, its websocket extension and the live socket still work under it."""

from __future__ import annotations

import re

from playwright.sync_api import expect


def _watch_for_violations(page) -> list[str]:
    problems: list[str] = []
    page.on(
        "console",
        lambda message: (
            problems.append(message.text)
            if message.type == "error"
            and re.search("Content Security Policy|Refused to", message.text)
            else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


def test_the_main_pages_break_no_rule_of_the_content_security_policy(
    page, live_portal, portal_owner
):
    from agents.models import Machine
    from jobs.models import Job
    from tests.e2e.conftest import sign_in_with_cookie
    from tests.support import builders

    vault = builders.make_vault(resource_group=portal_owner.resource_group, name="vault-csp")
    machine = Machine.objects.create(vault=vault, name="web-01")
    job = Job.objects.create(
        vault=vault,
        machine=machine,
        operation=Job.Operation.BACKUP,
        status=Job.Status.RUNNING,
        progress={"percent": 42},
    )
    problems = _watch_for_violations(page)
    page.set_default_timeout(10_000)

    response = page.goto(live_portal + "/signin/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy

    sign_in_with_cookie(page, live_portal, portal_owner.user)
    sub, group = portal_owner.subscription, portal_owner.resource_group
    for path in [
        "/",
        "/resources/",
        "/notifications/",
        "/subscriptions/",
        f"/subscriptions/{sub.pk}/",
        f"/subscriptions/{sub.pk}/access/",
        "/resource-groups/",
        f"/resource-groups/{group.pk}/",
        "/vaults/",
        "/vaults/create/",
        f"/vaults/{vault.pk}/",
        f"/vaults/{vault.pk}/backup/",
        f"/vaults/{vault.pk}/activity/",
        f"/vaults/activity/subscription/{sub.pk}/",
        "/machines/",
        f"/machines/{machine.pk}/",
        "/jobs/",
        f"/jobs/{job.pk}/",
        "/jobs/reports/?period=90",
        "/backup-center/",
        f"/backup-center/vaults/{vault.pk}/webhooks/",
        "/users/",
        "/users/create/",
        "/account/password/",
    ]:
        page.goto(live_portal + path)
        expect(page.locator("body")).to_have_attribute("data-live", "open")
        assert problems == [], f"{path}: {problems}"

    # htmx under the policy: live search, and a select that submits its form.
    page.goto(live_portal + "/")
    page.locator("#global-search").fill("rg-backup")
    expect(page.locator("#search-results")).to_contain_text("rg-backup-west")
    page.goto(live_portal + "/resources/")
    page.get_by_label("Type").select_option(index=1)
    expect(page).to_have_url(re.compile(r"type="))
    assert problems == []
