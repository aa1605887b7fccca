"""A new user's first sign-in in Chromium: the one-time password opens only "Change
password" until it is replaced."""

from __future__ import annotations

import re

from playwright.sync_api import expect


def test_a_new_user_must_replace_the_one_time_password_before_anything_else(
    page, live_portal, portal_owner
):
    from portal import services
    from portal.models import Role

    _, password = services.user_create(
        username="erin",
        full_name="Erin New",
        email="",
        subscription=portal_owner.subscription,
        role=Role.READER,
    )
    page.set_default_timeout(10_000)
    page.goto(live_portal + "/signin/")
    page.get_by_label("User name").fill("erin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Change password")).to_be_visible()
    expect(page.get_by_text("nothing else in the portal opens")).to_be_visible()

    # The left navigation's links lead back here.
    page.goto(live_portal + "/vaults/")
    expect(page).to_have_url(re.compile(r"/account/password/$"))
    page.goto(live_portal + "/machines/agent/installer/")
    expect(page).to_have_url(re.compile(r"/account/password/$"))

    page.get_by_label("Old password").fill(password)
    page.get_by_label("New password", exact=True).fill("erin's own long phrase 7")
    page.get_by_label("New password confirmation").fill("erin's own long phrase 7")
    page.get_by_role("button", name="Change password").click()
    expect(page.get_by_text("Your password was changed.")).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    page.goto(live_portal + "/vaults/")
    expect(page).to_have_url(re.compile(r"/vaults/$"))
