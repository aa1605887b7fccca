"""Failed sign-ins in Chromium: after the limit, the page says how long to wait."""

from __future__ import annotations

import pytest
from django.conf import settings
from playwright.sync_api import expect

from tests.e2e.conftest import make_user, sign_in_with_cookie


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


def test_the_administrator_finds_a_made_up_names_pause_in_sign_in_activity(
    page, live_portal, screenshot
):
    page.set_default_timeout(10_000)
    page.goto(live_portal + "/signin/")
    for _ in range(settings.HAVEN_SIGNIN_FAILURE_LIMIT):
        page.get_by_label("User name").fill("no-such-person")
        page.get_by_label("Password").fill("a guess")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_be_visible()
    page.context.clear_cookies()

    root = make_user("root", is_superuser=True, is_staff=True)
    sign_in_with_cookie(page, live_portal, root)
    page.goto(live_portal + "/")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Sign-in activity").click()
    expect(page.get_by_role("heading", name="Sign-in activity")).to_be_visible()
    row = page.locator("#signin-activity tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("no-such-person")
    expect(row).to_contain_text("127.0.0.1")
    expect(row).to_contain_text("Sign-in paused for 1 second after")
    screenshot("signin-activity", viewport="desktop")
