"""The portal shell end to end in Chromium: sign in, create a subscription and a resource
group, and see a notification arrive without a reload."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.e2e.conftest import make_user


def test_sign_in_create_subscription_and_group_then_a_notification_arrives_live(
    page, live_portal, screenshot
):
    from portal import services
    from portal.models import ResourceGroup, Subscription, User

    admin = make_user("admin", is_superuser=True, is_staff=True)
    page.set_default_timeout(10_000)

    page.goto(live_portal + "/")
    expect(page).to_have_url(re.compile(r"/signin/"))
    screenshot("signin-desktop")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("The user name or password is wrong")
    page.get_by_label("Password").fill(admin.raw_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome to Haven")).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-live", "open")

    # Create a subscription, with the name rule checked while typing.
    page.get_by_role("link", name="Create subscription").first.click()
    name = page.get_by_label("Subscription name")
    name.fill("-bad name")
    expect(page.locator("#name-errors")).to_contain_text("must start with a letter or a digit")
    name.fill("Contoso Production")
    expect(page.locator("#name-errors")).to_be_empty()
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Contoso Production")).to_be_visible()
    subscription = Subscription.objects.get(name="Contoso Production")
    assert subscription.memberships.get().user == admin

    # A resource group in it; the bell counts the two deployments.
    page.get_by_role("link", name="Create resource group").first.click()
    page.get_by_label("Resource group").fill("rg-backup-west")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="rg-backup-west")).to_be_visible()
    assert ResourceGroup.objects.filter(subscription=subscription, name="rg-backup-west").exists()
    expect(page.locator("#bell-count")).to_have_text("2")

    # Another process publishes: the toast and the bell update without a reload.
    page.evaluate("window.__sameDocument = true")
    services.notification_publish(
        user=User.objects.get(pk=admin.pk),
        title="Backup job completed",
        body="web-01: 1,204 files, 84 MB transferred.",
        level="success",
    )
    expect(page.locator(".toast")).to_contain_text("Backup job completed")
    expect(page.locator("#bell-count")).to_have_text("3")
    assert page.evaluate("window.__sameDocument") is True
    screenshot("toast-desktop")

    page.locator("#bell summary").click()
    expect(page.locator("#notification-list")).to_contain_text("Backup job completed")
    screenshot("bell-desktop")
    page.get_by_role("button", name="Mark all read").click()
    expect(page.locator("#bell-count")).to_be_hidden()
    assert not admin.notifications.filter(read_at__isnull=True).exists()

    # A reload shows the same from the database.
    page.reload()
    expect(page.locator("#bell-count")).to_be_hidden()
    page.locator("#bell summary").click()
    expect(page.locator("#notification-list")).to_contain_text("Backup job completed")


def test_the_shell_works_on_a_desktop_and_a_phone(
    signed_in_page, live_portal, portal_owner, screenshot
):
    page = signed_in_page
    subscription = portal_owner.subscription
    screenshot("home-desktop")

    # Global search finds the resource group from the top bar.
    page.locator("#global-search").fill("backup")
    result = page.locator("#search-results .search-item", has_text="rg-backup-west")
    expect(result).to_be_visible()
    screenshot("search-desktop")
    result.click()
    expect(page.get_by_role("heading", name="rg-backup-west")).to_be_visible()

    page.goto(live_portal + "/resources/")
    expect(page.locator("table.grid")).to_contain_text("Contoso Production")
    screenshot("resources-desktop")
    page.goto(live_portal + f"/subscriptions/{subscription.pk}/")
    screenshot("subscription-desktop")
    page.goto(live_portal + f"/subscriptions/{subscription.pk}/access/")
    screenshot("access-desktop")

    # The navigation collapses to an icon rail and comes back.
    page.locator("[data-nav-toggle]").click()
    expect(page.locator("body")).to_have_class(re.compile("nav-collapsed"))
    screenshot("nav-collapsed-desktop")
    page.locator("[data-nav-toggle]").click()
    expect(page.locator("body")).not_to_have_class(re.compile("nav-collapsed"))

    # On a phone the navigation is hidden until the toggle opens it over the page.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(live_portal + "/")
    nav = page.locator("#leftnav")
    expect(nav.get_by_role("link", name="Resource groups")).not_to_be_in_viewport()
    screenshot("home-phone")
    page.locator("[data-nav-toggle]").click()
    expect(nav.get_by_role("link", name="Resource groups")).to_be_in_viewport()
    page.wait_for_timeout(300)  # let the slide-in finish for the picture
    screenshot("nav-open-phone")
    nav.get_by_role("link", name="Resource groups").click()
    expect(page.get_by_role("heading", name="Resource groups")).to_be_visible()
    screenshot("resource-groups-phone")
    page.goto(live_portal + f"/resource-groups/{portal_owner.resource_group.pk}/")
    screenshot("resource-group-phone")
    page.locator("#bell summary").click()
    expect(page.locator(".bell-panel")).to_be_in_viewport()
    screenshot("bell-phone")
