"""The activity log's grid at a desktop width in Chromium: long details wrap in their column
instead of pushing the table past the page."""

from __future__ import annotations

from playwright.sync_api import expect


def test_a_restore_entrys_long_details_wrap_inside_the_page(
    signed_in_page, live_portal, portal_owner
):
    """A restore's entry names its recovery point (32 hex digits) and its time (an ISO
    timestamp): the Details column was as wide as those, the grid 988 px in a 890 px pane at
    1440x900, and the details' right edge was cut off behind a horizontal scrollbar."""
    from vaults import activity
    from vaults.activity import Operation
    from vaults.models import Vault

    page = signed_in_page
    page.set_viewport_size({"width": 1440, "height": 900})
    vault = Vault.objects.create(
        subscription=portal_owner.subscription,
        resource_group=portal_owner.resource_group,
        name="vault-prod",
        location="West Europe",
        state=Vault.State.READY,
    )
    activity.record(
        operation=Operation.RESTORE_START,
        user=portal_owner.user,
        vault=vault,
        resource=activity.Resource("machine", "1", "web-01"),
        detail={
            "job": "eda4af68-e0be-4c66-8c15-06c122cdac26",
            "target": "web-01",
            "recovery_point": "dee8dd129f55774106a9d2575c7066a5",
            "recovery_point_time": "2026-12-06T23:49:17.596939+00:00",
            "items": 1,
        },
    )
    page.goto(f"{live_portal}/vaults/{vault.pk}/activity/")
    grid = page.locator("#activity-log")
    expect(grid).to_contain_text("dee8dd129f55774106a9d2575c7066a5")
    pane = grid.locator("xpath=..")
    assert pane.evaluate("w => w.scrollWidth <= w.clientWidth"), pane.evaluate(
        "w => [w.scrollWidth, w.clientWidth]"
    )
