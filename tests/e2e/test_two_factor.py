"""Two-factor sign-in in Chromium: set it up from the account menu (reading the key off the
page and computing the code as an authenticator app would), sign out, sign in with the
password and the code, then once more with a recovery code."""

from __future__ import annotations

from playwright.sync_api import expect

from portal.models import Role
from tests.e2e.conftest import make_user, sign_in_with_cookie
from tests.e2e.test_csp import _watch_for_violations
from tests.support.builders import give_role
from tests.support.totp import code_for_key, key_from_secret_text


def _sign_out(page) -> None:
    page.get_by_label("Account menu").click()
    page.get_by_role("menuitem", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def _password(page, password: str) -> None:
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Enter code")).to_be_visible()


def test_enrol_then_sign_in_with_a_code_and_with_a_recovery_code(
    page, live_portal, portal_owner, screenshot
):
    page.set_default_timeout(10_000)
    problems = _watch_for_violations(page)  # the inline QR code SVG included
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    page.goto(live_portal + "/")
    page.get_by_label("Account menu").click()
    page.get_by_role("menuitem", name="Two-factor sign-in").click()
    page.get_by_role("button", name="Set up two-factor sign-in").click()
    expect(page.locator("#qr-code svg")).to_be_visible()
    screenshot("two-factor-enrol", viewport="desktop", full_page=True)

    key = key_from_secret_text(page.locator("#totp-secret").inner_text())
    page.get_by_label("Code").fill(code_for_key(key))
    page.get_by_role("button", name="Confirm and turn on").click()
    codes = page.locator("#recovery-codes li")
    expect(codes).to_have_count(10)
    recovery = codes.nth(0).inner_text()
    screenshot("two-factor-recovery-codes", full_page=True)
    page.get_by_role("link", name="I saved them — continue").click()
    expect(page.get_by_role("heading", name="Welcome to Haven")).to_be_visible()

    _sign_out(page)
    _password(page, portal_owner.password)
    page.get_by_label("Code").fill("000000")
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text("That code is wrong or was already used")
    screenshot("two-factor-signin-code")
    # The step after the one enrolment used: a code is good once (the app shows it 30 s later).
    page.get_by_label("Code").fill(code_for_key(key, steps_ahead=1))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("heading", name="Welcome to Haven")).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-live", "open")

    _sign_out(page)
    _password(page, portal_owner.password)
    page.get_by_label("Code").fill(recovery)
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("heading", name="Welcome to Haven")).to_be_visible()
    page.goto(live_portal + "/account/two-factor/")
    expect(page.locator("#codes-left")).to_have_text("9 of 10 unused")
    screenshot("two-factor-on", full_page=True)

    # The Owner requires it of Contoso's members: bob, who has none, is sent to set-up.
    page.goto(f"{live_portal}/subscriptions/{portal_owner.subscription.pk}/access/")
    page.get_by_label("Require two-factor sign-in for every member").check()
    page.locator("#two-factor-requirement").get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("must now sign in with a second factor")
    screenshot("two-factor-required-setting", full_page=True)
    bob = make_user("bob", first_name="Bob")
    give_role(user=bob, subscription=portal_owner.subscription, role=Role.READER)
    page.context.clear_cookies()
    sign_in_with_cookie(page, live_portal, bob)
    page.goto(live_portal + "/vaults/")
    expect(page.locator("#two-factor-required")).to_contain_text(
        "Contoso Production requires it of every member"
    )
    screenshot("two-factor-required-member", full_page=True)
    assert problems == []
