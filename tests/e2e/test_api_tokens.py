"""A personal access token in Chromium: created on the account page (shown once), used by a
script against the live portal, revoked, refused; and the interactive API page renders
under the portal's Content-Security-Policy."""

from __future__ import annotations

import re

import requests
from playwright.sync_api import expect


def test_a_token_is_created_shown_once_used_and_revoked(signed_in_page, live_portal, screenshot):
    page = signed_in_page
    page.locator("summary[aria-label='Account menu']").click()
    page.get_by_role("menuitem", name="Access tokens").click()
    expect(page.get_by_role("heading", name="Access tokens")).to_be_visible()
    page.get_by_label("Name").fill("backup-scripts")
    page.get_by_label("Expires after").select_option("90")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token")
    expect(secret).to_have_text(re.compile(r"^hvn_\S{40,}$"))
    token = secret.inner_text()
    expect(page.get_by_text("It is shown only this once")).to_be_visible()
    screenshot("api-token-created")

    me = requests.get(
        live_portal + "/api/v1/me/", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert (me.status_code, me.json()["username"]) == (200, "alice")

    page.goto(live_portal + "/account/tokens/")  # the page again: the token is not shown
    expect(page.locator("#new-token")).to_have_count(0)
    assert token not in page.content()
    row = page.locator("#tokens tr", has_text="backup-scripts")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Active")
    expect(row).to_contain_text(token[:10])
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("Token 'backup-scripts' is revoked")).to_be_visible()
    expect(page.locator("#tokens tr", has_text="backup-scripts")).to_contain_text("Revoked")
    screenshot("api-token-revoked")
    refused = requests.get(
        live_portal + "/api/v1/me/", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]

    violations: list[str] = []
    page.on(
        "console", lambda m: violations.append(m.text) if "Content Security" in m.text else None
    )
    page.goto(live_portal + "/api/v1/docs/")
    # The schema is generated on the first request: on a busy 2-core machine, seconds.
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Haven API", timeout=30_000)
    expect(page.locator(".opblock-tag", has_text="vaults")).to_be_visible()
    expect(page.get_by_role("button", name="Authorize")).to_be_visible()
    screenshot("api-docs")
    assert violations == []
