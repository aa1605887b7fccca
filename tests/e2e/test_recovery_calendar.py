"""Recover Data's calendar in Chromium: the newest day's times are there on arrival; an older
day's times load when it is chosen; a point chosen on one day stays chosen while another day
is shown, and the restore started is of that point; a day's only point is chosen (and
browsed) without a click; "Recover this version" of a point whose
day is not loaded loads it and chooses the point; times, folders and answers that cannot load
say why in their place. No agent: the points are rows (a question stays unanswered)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from jobs.models import Job, RecoveryPoint
from jobs.schedule import zone
from tests.e2e.conftest import sign_in_with_cookie
from tests.support import builders

pytestmark = pytest.mark.slow


def _point(machine, at, n: int) -> RecoveryPoint:
    return RecoveryPoint.objects.create(
        machine=machine, vault=machine.vault, snapshot_id=f"{n:032x}",
        manifest_blob=f"snapshots/{n:032x}", created_at=at, tagged_for=at,
        kind=RecoveryPoint.Kind.SCHEDULED, logical_bytes=4096 * (n + 1), file_count=10 + n,
    )  # fmt: skip


def _web01(owner, *, time_zone: str):
    """web-01, online, in a vault of its own: the machine each calendar test recovers from."""
    vault = builders.make_vault(resource_group=owner.resource_group, container="v1")
    return builders.make_machine(
        vault=vault, name="web-01", container="m-web-01", time_zone=time_zone,
        last_seen_at=timezone.now(),
    )  # fmt: skip


def test_choose_an_older_day_then_a_time_and_recover_it(
    live_portal, portal_owner, page, screenshot
):
    web01 = _web01(portal_owner, time_zone="Europe/Amsterdam")
    tz = zone(web01.time_zone)
    today = timezone.now().astimezone(tz).replace(hour=9, minute=0, second=0, microsecond=0)
    older = today - timedelta(days=40)  # another month of the calendar
    latest = [_point(web01, today - timedelta(hours=h), n) for n, h in enumerate((0, 3))]
    old = [_point(web01, older + timedelta(hours=h), 10 + n) for n, h in enumerate((1, 7, 13))]
    for n in range(30):  # hourly for a few days between: their times are not in the page
        _point(web01, today - timedelta(days=3, hours=n), 100 + n)

    page.set_default_timeout(10_000)
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    page.goto(f"{live_portal}/recover/{web01.pk}/to/{web01.pk}/")
    times = page.locator("fieldset.times:visible")
    expect(times).to_have_count(1)
    expect(times).to_have_attribute("data-day", f"{today:%Y-%m-%d}")
    expect(times.locator("input[name=rp]")).to_have_count(2)  # the latest: no extra click
    assert page.locator("input[name=rp]").count() == 2  # one day's points in the page

    old_day = page.locator(f".calendar-day.has-points[data-day='{older:%Y-%m-%d}']")
    old_day.click()
    expect(times).to_have_attribute("data-day", f"{older:%Y-%m-%d}")
    expect(times.locator("input[name=rp]")).to_have_count(3)
    expect(old_day).to_have_attribute("aria-current", "date")
    expect(times).to_contain_text(f"{older + timedelta(hours=7):%H:%M}")  # the machine's time
    times.locator(f"input[value='{old[1].snapshot_id}']").check()
    expect(page.locator("[data-field=point-label]")).to_contain_text(f"{older:%d}")

    # Another day shown: the chosen point stays chosen.
    page.locator(f".calendar-day.has-points[data-day='{today:%Y-%m-%d}']").click()
    expect(times).to_have_attribute("data-day", f"{today:%Y-%m-%d}")
    expect(page.locator("input[name=rp]:checked")).to_have_value(old[1].snapshot_id)
    expect(page.locator(".wizard-steps [data-step=point]")).to_have_class("done")

    # Continue: System State, into a folder; the step looks finished.
    page.locator("input[name=recover_mode][value=system_state]").check()
    expect(page.locator("[data-field=selected-count]")).to_have_text("1")
    page.locator("input[name=folder]").fill("/srv/restored")
    page.locator(f".calendar-day.has-points[data-day='{older:%Y-%m-%d}']").click()
    expect(page.locator("[data-action=recover]")).to_be_enabled()
    screenshot("recovery-wizard-older-day", full_page=True)

    # "Recover this version" of a point on a day not loaded yet (the markup _versions.html
    # gives, as the agent's answer would put it in #versions).
    page.locator("input[name=recover_mode][value=files]").check()
    page.evaluate(
        """([rp]) => { document.getElementById("versions").innerHTML =
        '<button type="button" class="button" data-use-version data-rp="' + rp +
        '" data-path="/etc/hosts">Recover this version</button>'; }""",
        [latest[1].snapshot_id],
    )
    page.get_by_role("button", name="Recover this version").click()
    expect(page.locator("input[name=rp]:checked")).to_have_value(latest[1].snapshot_id)
    expect(times).to_have_attribute("data-day", f"{today:%Y-%m-%d}")
    expect(page.locator("#selection")).to_contain_text("/etc/hosts")

    # Back to the older day's point, System State again, and recover it.
    page.locator(f".calendar-day.has-points[data-day='{older:%Y-%m-%d}']").click()
    times.locator(f"input[value='{old[2].snapshot_id}']").check()
    page.locator("input[name=recover_mode][value=files]").check()
    page.locator("input[name=recover_mode][value=system_state]").check()
    page.locator("input[name=folder]").fill("/srv/restored")
    page.locator("[data-action=recover]").click()
    page.wait_for_url("**/jobs/*/")
    job = Job.objects.get(operation=Job.Operation.RESTORE)
    assert job.details["recovery_point"] == old[2].snapshot_id


def test_a_days_times_that_cannot_load_say_why_in_their_place(
    live_portal, portal_owner, page, screenshot
):
    web01 = _web01(portal_owner, time_zone="UTC")
    today = timezone.now().replace(hour=9, minute=0, second=0, microsecond=0)
    days = [today - timedelta(days=n) for n in (0, 5, 9, 12)]
    points = [_point(web01, day, n) for n, day in enumerate(days)]

    page.set_default_timeout(10_000)
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    page.goto(f"{live_portal}/recover/{web01.pk}/to/{web01.pk}/")
    times = page.locator("fieldset.times:visible")
    expect(times).to_have_attribute("data-day", f"{today:%Y-%m-%d}")
    error = page.locator(".recovery-times [role=alert]")

    # The portal out of reach: the day is chosen, and its times' place says so.
    page.context.set_offline(True)
    day = page.locator(f".calendar-day.has-points[data-day='{days[1]:%Y-%m-%d}']")
    day.click()
    expect(error).to_contain_text(
        f"The portal did not answer, so the times of {days[1]:%d %B %Y} could not be loaded."
    )
    expect(times).to_have_count(0)
    expect(day).to_have_attribute("aria-current", "date")
    assert page.url.endswith(f"/recover/{web01.pk}/to/{web01.pk}/")  # still the wizard
    screenshot("recovery-times-unreachable", full_page=True)
    # Back in reach: Try again shows them.
    page.context.set_offline(False)
    error.get_by_role("button", name="Try again").click()
    expect(times).to_have_attribute("data-day", f"{days[1]:%Y-%m-%d}")
    expect(error).to_have_count(0)

    # A recovery point gone meanwhile (404), asked for by "Recover this version".
    points[2].delete()
    page.evaluate(
        """([rp]) => { document.getElementById("versions").innerHTML =
        '<button type="button" class="button" data-use-version data-rp="' + rp +
        '" data-path="/etc/hosts">Recover this version</button>'; }""",
        [points[2].snapshot_id],
    )
    page.get_by_role("button", name="Recover this version").click()
    expect(error).to_contain_text("That recovery point is no longer there")
    expect(times).to_have_count(0)

    # The person's access gone meanwhile (404, as for any outsider).
    portal_owner.user.memberships.all().delete()
    page.locator(f".calendar-day.has-points[data-day='{days[3]:%Y-%m-%d}']").click()
    expect(error).to_contain_text(
        "This machine or its recovery points are no longer there for you. Reload the page."
    )
    expect(error).to_have_count(1)


def test_a_browse_that_cannot_load_says_why_in_its_place(
    live_portal, portal_owner, page, screenshot
):
    web01 = _web01(portal_owner, time_zone="UTC")
    yesterday = timezone.now().replace(hour=9, minute=0) - timedelta(days=1)
    point = _point(web01, yesterday, 1)
    _point(web01, yesterday + timedelta(hours=1), 2)  # two on the day: none chosen for us

    page.set_default_timeout(10_000)
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    page.goto(f"{live_portal}/recover/{web01.pk}/to/{web01.pk}/")
    browser = page.locator("#browser")
    error = browser.locator("[role=alert]")
    asking = browser.locator(".recovery-pending")

    # The portal out of reach when a time is chosen: the folder's place says so, no spinner.
    page.context.set_offline(True)
    page.locator(f"input[name=rp][value='{point.snapshot_id}']").check()
    expect(error).to_contain_text("The portal did not answer, so the folder could not be loaded.")
    expect(asking).to_have_count(0)
    screenshot("recovery-browse-unreachable", full_page=True)
    # Back in reach: Try again asks the agent again (the same point and folder).
    page.context.set_offline(False)
    with page.expect_request("**/ask/browse/") as asked:
        error.get_by_role("button", name="Try again").click()
    assert f"rp={point.snapshot_id}" in asked.value.post_data
    assert "path=%2F" in asked.value.post_data
    expect(asking).to_contain_text("Asking web-01's agent")
    expect(error).to_have_count(0)

    # The poll for the answer failing on the network says so too, and Try again polls again.
    page.context.set_offline(True)
    expect(error).to_contain_text(
        "The portal did not answer, so the agent's answer could not be loaded."
    )
    page.context.set_offline(False)
    error.get_by_role("button", name="Try again").click()
    expect(asking).to_contain_text("Asking web-01's agent")

    # A 502 from a reverse proxy in front of the portal (a restart): "try again in a moment".
    page.route("**/ask/search/", lambda route: route.fulfill(status=502, body="Bad Gateway"))
    page.get_by_label("Search file names").fill("report")
    page.get_by_role("button", name="Search").click()
    expect(error).to_contain_text(
        "The portal could not load the search results just now (error 502). Try again in a moment."
    )
    page.unroute("**/ask/search/")
    error.get_by_role("button", name="Try again").click()
    expect(asking).to_contain_text("Asking web-01's agent")

    # The person's access gone while the answer is awaited: the portal's real 404.
    portal_owner.user.memberships.all().delete()
    expect(error).to_contain_text(
        "This machine or its recovery points are no longer there for you. Reload the page."
    )
    expect(asking).to_have_count(0)
    expect(error).to_have_count(1)


def test_a_days_only_recovery_point_is_chosen_without_a_click(
    live_portal, portal_owner, page, screenshot
):
    web01 = _web01(portal_owner, time_zone="UTC")
    today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    only_today = _point(web01, today, 1)
    two_days = today - timedelta(days=3)
    pair = [_point(web01, two_days + timedelta(hours=h), 2 + h) for h in (1, 5)]
    lone = _point(web01, today - timedelta(days=6), 9)

    page.set_default_timeout(10_000)
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    browsed = []
    page.on(
        "request",
        lambda r: browsed.append(r.post_data) if r.url.endswith("/ask/browse/") else None,
    )
    page.goto(f"{live_portal}/recover/{web01.pk}/to/{web01.pk}/")
    chosen = page.locator("input[name=rp]:checked")
    expect(chosen).to_have_value(only_today.snapshot_id)
    expect(page.locator("[data-field=point-label]")).to_contain_text(f"{today:%d} ")
    expect(page.locator(".wizard-steps [data-step=point]")).to_have_class("done")
    expect(page.locator("#browser")).to_contain_text("Asking web-01's agent")  # its folders
    assert any(f"rp={only_today.snapshot_id}" in (data or "") for data in browsed)
    screenshot("recovery-wizard-one-point", full_page=True)

    # A day with two points: the person chooses; the point chosen stays until then.
    page.locator(f".calendar-day.has-points[data-day='{two_days:%Y-%m-%d}']").click()
    times = page.locator("fieldset.times:visible")
    expect(times).to_have_attribute("data-day", f"{two_days:%Y-%m-%d}")
    expect(times.locator("input[name=rp]")).to_have_count(2)
    expect(times.locator("input[name=rp]:checked")).to_have_count(0)
    expect(chosen).to_have_value(only_today.snapshot_id)

    # Another day with one point: chosen as the day is.
    with page.expect_request("**/ask/browse/") as asked:
        page.locator(f".calendar-day.has-points[data-day='{lone.created_at:%Y-%m-%d}']").click()
    assert f"rp={lone.snapshot_id}" in asked.value.post_data
    expect(chosen).to_have_value(lone.snapshot_id)

    # With items of that point selected, showing a lone point's day does not drop them.
    page.locator(f".calendar-day.has-points[data-day='{two_days:%Y-%m-%d}']").click()
    times.locator(f"input[value='{pair[0].snapshot_id}']").check()
    page.locator("input[name=recover_mode][value=system_state]").check()
    expect(page.locator("[data-field=selected-count]")).to_have_text("1")
    page.locator(f".calendar-day.has-points[data-day='{today:%Y-%m-%d}']").click()
    expect(times).to_have_attribute("data-day", f"{today:%Y-%m-%d}")
    expect(chosen).to_have_value(pair[0].snapshot_id)
    expect(page.locator("[data-field=selected-count]")).to_have_text("1")
