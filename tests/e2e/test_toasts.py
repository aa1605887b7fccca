"""Toasts in Chromium: what a live notification looks like when it arrives."""

from __future__ import annotations

from playwright.sync_api import expect


def test_a_toast_without_a_body_puts_its_link_on_a_line_of_its_own(signed_in_page, portal_owner):
    """A restore's end notifies with a title and a link only ("Restore on web-01: Completed",
    "View job"); the link used to run on from the title as "CompletedView job"."""
    from portal import services

    page = signed_in_page
    page.set_viewport_size({"width": 1440, "height": 900})
    services.notification_publish(
        user=portal_owner.user,
        title="Restore on web-01: Completed",
        level="success",
        link_url="/jobs/",
        link_label="View job",
    )
    toast = page.locator(".toast").last
    expect(toast).to_contain_text("Restore on web-01: Completed")
    title = toast.locator("strong").bounding_box()
    link = toast.get_by_role("link", name="View job").bounding_box()
    assert title is not None and link is not None
    assert link["y"] >= title["y"] + title["height"], (title, link)
