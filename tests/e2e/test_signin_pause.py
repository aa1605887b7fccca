"""Failed sign-ins in Chromium: after the limit, the page says how long to wait."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect


# The first pause is one second: a slow sixth attempt would come after it has passed.
@pytest.mark.alone
def test_repeated_wrong_passwords_show_the_pause_and_it_passes(page, live_portal, portal_owner):
    page.set_default_timeout(10_000)
    page.goto(live_portal + "/signin/")
    for _ in range(5):
        page.get_by_label("User name").fill("alice")
        page.get_by_label("Password").fill("not the password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_be_visible()
    page.get_by_label("Password").fill(portal_owner.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text(
        "Too many failed sign-in attempts for this account from your address. Try again in"
    )
    expect(page.get_by_label("User name")).to_have_value("alice")
    page.wait_for_timeout(1_200)  # the first pause is one second
    page.get_by_label("Password").fill(portal_owner.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome to Haven")).to_be_visible()
