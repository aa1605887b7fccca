"""A filter row's time range in Chromium (Backup jobs; the activity logs include the same
markup, portal/_time_range.html): From and To are there only for "Custom range", appear as
it is chosen and go as another range is, a custom range applied comes back with the same
days in its boxes, and without JavaScript Apply shows them."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from jobs.models import Job
from tests.e2e.conftest import sign_in_with_cookie
from tests.support import builders

pytestmark = pytest.mark.slow


def _jobs(portal_owner):
    vault = builders.make_vault(resource_group=portal_owner.resource_group, container="v1")
    machine = builders.make_machine(vault=vault, name="web-01", container="m-web-01")
    now = timezone.now()
    made = {}
    for days in (2, 20):
        job = Job.objects.create(
            vault=vault, machine=machine, operation=Job.Operation.BACKUP,
            status=Job.Status.COMPLETED,
        )  # fmt: skip
        Job.objects.filter(pk=job.pk).update(created_at=now - timedelta(days=days))
        made[days] = job
    return made


def test_from_and_to_show_only_for_a_custom_range(live_portal, portal_owner, page, screenshot):
    jobs = _jobs(portal_owner)
    page.set_default_timeout(10_000)
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    page.goto(f"{live_portal}/jobs/")
    start, end = page.locator("input[name=start]"), page.locator("input[name=end]")
    expect(page.get_by_label("Time range")).to_have_value("7d")
    expect(start).to_be_hidden()
    expect(end).to_be_hidden()
    expect(page.locator(".job-grid tbody tr")).to_have_count(1)
    screenshot("jobs-filter-last-7-days", target=page.locator("form.filters"))

    page.get_by_label("Time range").select_option(label="Custom range")
    expect(start).to_be_visible()
    expect(end).to_be_enabled()
    today = timezone.localdate()
    page.get_by_label("From", exact=True).fill(f"{today - timedelta(days=25):%Y-%m-%d}")
    page.get_by_label("To", exact=True).fill(f"{today - timedelta(days=10):%Y-%m-%d}")
    screenshot("jobs-filter-custom-range", target=page.locator("form.filters"))
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"range=custom"))
    rows = page.locator(".job-grid tbody tr")
    expect(rows).to_have_count(1)
    expect(page.locator(f"#job-row-{jobs[20].pk}")).to_be_visible()
    # The same days come back in the boxes (To is not moved on by a day at each Apply).
    expect(start).to_have_value(f"{today - timedelta(days=25):%Y-%m-%d}")
    expect(end).to_have_value(f"{today - timedelta(days=10):%Y-%m-%d}")

    # Another range: the boxes go, and are not sent.
    page.get_by_label("Time range").select_option(label="Last 30 days")
    expect(start).to_be_hidden()
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(2)
    assert "start=" not in page.url and "end=" not in page.url


def test_without_javascript_apply_shows_the_custom_range_boxes(live_portal, portal_owner, browser):
    _jobs(portal_owner)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.set_default_timeout(10_000)
    sign_in_with_cookie(page, live_portal, portal_owner.user)
    page.goto(f"{live_portal}/jobs/")
    expect(page.locator("input[name=start]")).to_be_hidden()
    page.get_by_label("Time range").select_option(label="Custom range")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_label("From", exact=True)).to_be_visible()
    expect(page.get_by_label("To", exact=True)).to_be_enabled()
    context.close()
