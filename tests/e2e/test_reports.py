"""Reports in Chromium: open Reports from the left nav, switch to 90 days, open a chart's
table view and download its CSV. The history is recorded rows (jobs, recovery points,
usage samples) spread over 80 days, so the 90-day view shows more than the 30-day one."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path

from django.utils import timezone
from playwright.sync_api import expect

from tests.support import builders

SHOTS = Path("/tmp/shots-reports")
MB = 1024 * 1024


def _history(owner) -> None:
    from jobs.models import BackupPolicy, Job, RecoveryPoint
    from vaults.models import VaultUsageSample

    vault = builders.make_vault(resource_group=owner.resource_group, name="rsv-west")
    now = timezone.now()
    for name, size in (("web-01", 40), ("db-01", 90)):
        machine = builders.make_machine(vault=vault, name=name, time_zone="UTC")
        BackupPolicy.objects.create(
            machine=machine,
            items=["/srv"],
            times=["00:00"],
            retention={"daily": {"days": 30}},
        )
        for back in range(80, -1, -1):
            at = now - timedelta(days=back, hours=1)
            status = Job.Status.FAILED if back % 11 == 4 else Job.Status.COMPLETED
            job = Job.objects.create(
                vault=vault,
                machine=machine,
                operation=Job.Operation.BACKUP,
                status=Job.Status.WARNING if back % 7 == 2 else status,
                started_at=at - timedelta(minutes=5 + back % 9),
                ended_at=at,
                bytes_transferred=(size * MB if back == 80 else (2 + back % 5) * MB),
            )
            if status == Job.Status.FAILED:
                continue
            RecoveryPoint.objects.create(
                machine=machine,
                vault=vault,
                job=job,
                snapshot_id=f"{name}-{back}",
                manifest_blob=f"manifests/{name}-{back}",
                created_at=at,
                tagged_for=at,
                kind=RecoveryPoint.Kind.SCHEDULED,
                stored_bytes=job.bytes_transferred,
                removed_at=at + timedelta(days=30) if back > 30 else None,
            )
    for back in range(80, -1, -2):
        VaultUsageSample.objects.create(
            vault=vault, taken_at=now - timedelta(days=back), bytes_used=(200 - back) * MB
        )


def test_reports_switch_to_90_days_table_view_and_csv(signed_in_page, live_portal, portal_owner):
    SHOTS.mkdir(exist_ok=True)
    page = signed_in_page

    page.get_by_role("link", name="Reports").click()
    expect(page.locator("h1")).to_have_text("Reports")
    expect(page.locator("#report-outcomes")).to_contain_text("No jobs finished in the last 30 days")
    page.screenshot(path=str(SHOTS / "reports-empty.png"), full_page=True)

    _history(portal_owner)
    page.reload()
    expect(page.locator("#report-outcomes svg title").first).to_contain_text("Job outcomes")
    assert page.locator("#report-outcomes svg rect").count() > 0

    page.get_by_role("link", name="90 days").click()
    expect(page.get_by_role("link", name="90 days")).to_have_attribute("aria-current", "true")
    expect(page.locator("#report-outcomes .card-head")).to_contain_text("Last 90 days")
    page.screenshot(path=str(SHOTS / "reports-90-days.png"), full_page=True)

    storage = page.locator("#report-machine-storage")
    storage.get_by_text("Table view").click()
    table = storage.locator(".table-view table")
    expect(table).to_be_visible()
    expect(table.locator("tbody tr")).to_have_count(90)
    expect(storage.locator(".expectations")).to_contain_text("db-01")
    storage.scroll_into_view_if_needed()
    storage.screenshot(path=str(SHOTS / "reports-table-view.png"))

    with page.expect_download() as download_info:
        storage.get_by_role("link", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename.startswith("haven-machine-storage-90d-")
    rows = list(csv.reader(io.StringIO(Path(download.path()).read_text())))
    assert rows[0][:3] == ["day", "db-01 (bytes)", "web-01 (bytes)"]
    assert rows[0][3:] == ["db-01, expected (bytes)", "web-01, expected (bytes)"]
    assert len(rows) == 91
    # The table view's last row is the CSV's last row, as the page formats it.
    last_cells = table.locator("tbody tr").last.locator("td")
    expect(last_cells.first).to_have_text(_size(int(rows[-1][1])))

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.locator("#report-machine-storage").screenshot(path=str(SHOTS / "reports-phone.png"))


def _size(value: int) -> str:
    from django.template.defaultfilters import filesizeformat

    return filesizeformat(value)
