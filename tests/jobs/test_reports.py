"""Reports (jobs.reports, jobs.report_views): the aggregation per day in the portal's zone,
the storage history and the expected growth, the CSV, constant queries, and who sees what."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from jobs import reports
from jobs.models import BackupPolicy, Job, RecoveryPoint
from portal.models import Role
from tests.support import builders
from vaults.models import VaultUsageSample

AMS = ZoneInfo("Europe/Amsterdam")
MB = 1024 * 1024
_snapshots = itertools.count()


def scope(vault_ids, days=30, machine_id=None, now=None) -> reports.Scope:
    return reports.Scope(
        vault_ids=vault_ids, days=days, tz=AMS, now=now or timezone.now(), machine_id=machine_id
    )


def local(day, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=AMS)


def job(machine, *, status=Job.Status.COMPLETED, ended_at, took=timedelta(minutes=5), sent=0):
    return Job.objects.create(
        vault=machine.vault,
        machine=machine,
        operation=Job.Operation.BACKUP,
        status=status,
        started_at=ended_at - took,
        ended_at=ended_at,
        bytes_transferred=sent,
    )


def point(machine, *, at, stored, removed_at=None) -> RecoveryPoint:
    snapshot = f"s{next(_snapshots)}"
    return RecoveryPoint.objects.create(
        machine=machine,
        vault=machine.vault,
        snapshot_id=snapshot,
        manifest_blob=f"manifests/{snapshot}",
        created_at=at,
        tagged_for=at,
        kind=RecoveryPoint.Kind.SCHEDULED,
        stored_bytes=stored,
        removed_at=removed_at,
    )


def daily_policy(machine, days: int) -> BackupPolicy:
    """Once a day at midnight, each point kept ``days`` days: the policy keeps ``days`` points."""
    return BackupPolicy.objects.create(
        machine=machine,
        items=["/srv"],
        frequency="daily",
        times=["00:00"],
        retention={"daily": {"days": days}},
    )


@pytest.fixture
def web(vault):
    return builders.make_machine(vault=vault, name="web-01", time_zone="Europe/Amsterdam")


@pytest.fixture
def db01(vault):
    return builders.make_machine(vault=vault, name="db-01", time_zone="Europe/Amsterdam")


@pytest.fixture
def today():
    return timezone.localtime(timezone.now(), AMS).date()


# --- aggregation ------------------------------------------------------------------------
def test_job_outcomes_fall_on_the_day_they_ended_in_the_portal_zone(vault, web, today):
    day = today - timedelta(days=2)
    # 00:30 and 23:30 the evening before, Amsterdam: the same UTC date, two local days.
    job(web, ended_at=local(day, 0, 30))
    job(web, status=Job.Status.FAILED, ended_at=local(day, 0, 30) - timedelta(hours=1))
    job(web, status=Job.Status.WARNING, ended_at=local(day, 12))
    job(web, status=Job.Status.CANCELLED, ended_at=local(today, 1))
    job(web, status=Job.Status.RUNNING, ended_at=local(today, 2))  # not an outcome yet
    job(web, ended_at=local(today - timedelta(days=30), 12))  # before the window

    chart = reports.job_outcomes(scope([vault.pk]))

    by_name = {s.name: s.values for s in chart.series}
    assert chart.days[-1] == today and len(chart.days) == 30
    assert by_name["Completed"][-3] == 1
    assert by_name["Completed with warnings"][-3] == 1
    assert by_name["Failed"][-4] == 1
    assert by_name["Cancelled"][-1] == 1
    assert sum(sum(v) for v in by_name.values()) == 4


def test_backup_duration_and_data_are_summed_per_machine_per_day(vault, web, db01, today):
    job(web, ended_at=local(today, 3), took=timedelta(minutes=10), sent=5 * MB)
    job(web, ended_at=local(today, 15), took=timedelta(minutes=20), sent=7 * MB)
    job(db01, ended_at=local(today - timedelta(days=1), 23, 50), took=timedelta(hours=2), sent=MB)
    names = {web.pk: "web-01", db01.pk: "db-01"}

    sent, took = reports.backup_activity(scope([vault.pk], days=90), names)

    assert len(sent.days) == 90
    assert {s.name: s.values[-1] for s in sent.series} == {"web-01": 12 * MB, "db-01": 0}
    assert {s.name: s.values[-2] for s in took.series} == {"web-01": 0, "db-01": 7200}
    assert {s.name: s.values[-1] for s in took.series}["web-01"] == 1800


def test_a_backup_under_a_second_still_shows_on_the_duration_chart(vault, web, today):
    """A first backup of a few files takes 0.4 s: the duration chart said "No backups
    finished in the last 30 days" beside the data chart that showed it."""
    job(web, ended_at=local(today - timedelta(days=1), 12), took=timedelta(milliseconds=400))
    job(web, ended_at=local(today - timedelta(days=2), 12), took=timedelta(seconds=2.5))

    _sent, took = reports.backup_activity(scope([vault.pk]), {web.pk: "web-01"})

    assert took.has_data
    assert took.series[0].values[-2] == 1  # rounded up to whole seconds
    assert took.series[0].values[-3] == 3


def test_machine_storage_follows_points_made_and_removed(vault, web, today):
    before = local(today - timedelta(days=40), 1)
    point(web, at=before, stored=100 * MB)  # still kept
    point(web, at=before, stored=50 * MB, removed_at=local(today - timedelta(days=5), 4))
    point(web, at=before, stored=30 * MB, removed_at=before + timedelta(days=1))  # gone before
    point(web, at=local(today - timedelta(days=3), 1), stored=20 * MB)

    chart, _ = reports.machine_storage(scope([vault.pk]), {web.pk: "web-01"})

    held = chart.series[0].values
    assert held[0] == 150 * MB
    # held[-1] is today: removed 5 days ago (index -6), added 3 days ago (index -4)
    assert held[-7] == 150 * MB and held[-6] == 100 * MB
    assert held[-5] == 100 * MB and held[-4] == 120 * MB and held[-1] == 120 * MB


def test_expected_growth_is_points_kept_times_the_average_added(vault, web, today):
    """The worked example of docs/reports.md: a policy keeping 7 daily points, three
    backups adding 100, 200 and 300 MB → 7 × 200 MB = 1,400 MB at full retention."""
    daily_policy(web, days=7)
    for back, stored in ((3, 100), (2, 200), (1, 300)):
        point(web, at=local(today - timedelta(days=back), 0, 5), stored=stored * MB)

    chart, expectations = reports.machine_storage(scope([vault.pk]), {web.pk: "web-01"})

    (expected,) = expectations
    assert (expected.points_kept, expected.average_added) == (7, 200 * MB)
    assert expected.expected == 1400 * MB
    assert expected.stored_now == 600 * MB
    projected = next(s for s in chart.series if s.projected)
    # min(points made so far, 7) × 200 MB, day by day
    assert projected.values[-5:] == [0, 200 * MB, 400 * MB, 600 * MB, 600 * MB]


def test_no_projection_without_a_policy_or_a_backup(vault, web, db01, today):
    point(web, at=local(today - timedelta(days=45), 1), stored=MB)  # before the window
    daily_policy(web, days=7)
    point(db01, at=local(today, 0, 5), stored=MB)

    _, expectations = reports.machine_storage(
        scope([vault.pk]), {web.pk: "web-01", db01.pk: "db-01"}
    )

    reasons = {e.machine: (e.expected, e.reason) for e in expectations}
    assert reasons == {
        "web-01": (None, "No backup in the last 30 days"),
        "db-01": (None, "No backup policy"),
    }


def test_vault_storage_takes_each_days_last_sample_and_carries_it(
    vault, today, resource_group, monkeypatch
):
    monkeypatch.setattr(reports, "SAMPLE_BATCH", 2)  # three (vault, moment) pairs: two batches
    newer = builders.make_vault(resource_group=resource_group, name="vault-two")
    VaultUsageSample.objects.create(vault=newer, taken_at=local(today, 1), bytes_used=5)
    VaultUsageSample.objects.create(
        vault=vault, taken_at=local(today - timedelta(days=50), 9), bytes_used=10
    )
    VaultUsageSample.objects.create(
        vault=vault, taken_at=local(today - timedelta(days=2), 1), bytes_used=20
    )
    VaultUsageSample.objects.create(
        vault=vault, taken_at=local(today - timedelta(days=2), 23), bytes_used=25
    )

    chart = reports.vault_storage(scope([vault.pk, newer.pk]))

    line, new = chart.series
    assert line.values[0] == 10 and line.values[-4] == 10
    assert line.values[-3:] == [25, 25, 25]
    # Before a vault's first measurement its storage is unknown, not zero.
    assert new.name == "vault-two" and new.values[:-1] == [None] * 29 and new.values[-1] == 5


def test_an_empty_report_says_what_to_do(vault):
    report = reports.report(scope([vault.pk]))
    assert not any(chart.has_data for chart in report.charts)
    assert report.chart("outcomes").empty.startswith("No jobs finished in the last 30 days")


# --- the page and the CSV ---------------------------------------------------------------
def test_the_csv_holds_exactly_the_charts_rows(client, alice, vault, web, today, settings):
    settings.TIME_ZONE = "Europe/Amsterdam"
    job(web, ended_at=local(today, 3), sent=5 * MB)
    client.force_login(alice)

    response = client.get(reverse("jobs:report_csv", args=["transferred"]), {"period": 30})

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert 'attachment; filename="haven-transferred-30d-' in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["day", "web-01 (bytes)"]
    assert len(rows) == 31
    assert rows[-1] == [today.isoformat(), str(5 * MB)]
    assert rows[1] == [(today - timedelta(days=29)).isoformat(), "0"]


def test_the_page_draws_each_chart_with_a_table_and_a_csv_link(client, alice, vault, web, today):
    job(web, ended_at=timezone.now(), sent=MB)
    client.force_login(alice)

    response = client.get(reverse("jobs:reports"), {"period": "90"})

    html = response.content.decode()
    assert response.status_code == 200
    assert '<svg class="report-chart stacked chart-outcomes"' in html
    assert '<title id="chart-outcomes-title">Job outcomes per day' in html
    assert html.count("<summary>Table view</summary>") == 3  # the three charts with data
    assert reverse("jobs:report_csv", args=["machine-storage"]) + "?period=90" in html
    assert "No recovery points in the last 90 days" in html


def test_the_pages_queries_do_not_grow_with_jobs_and_points(client, alice, vault, web, today):
    client.force_login(alice)
    daily_policy(web, days=7)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(reverse("jobs:reports")).status_code == 200
        return len(captured)

    def add(n: int) -> None:
        for i in range(n):
            at = local(today - timedelta(days=i % 28), 1)
            job(web, ended_at=at, sent=MB)
            point(web, at=at, stored=MB, removed_at=at + timedelta(days=1) if i % 2 else None)

    add(3)
    small = queries()
    add(60)
    assert queries() == small


@pytest.mark.parametrize("bad", [{"period": "7"}, {"period": "x"}, {"vault": "not-a-uuid"}])
def test_bad_filters_are_a_400_naming_the_field(client, alice, vault, bad):
    client.force_login(alice)
    page = client.get(reverse("jobs:reports"), bad)
    export = client.get(reverse("jobs:report_csv", args=["outcomes"]), bad)
    field = next(iter(bad))
    assert page.status_code == 400 and f"<b>{field}</b>" in page.content.decode()
    assert export.status_code == 400 and export.content.decode().startswith(f"{field}:")


def test_a_name_cannot_become_a_spreadsheet_formula(client, alice, vault, today):
    machine = builders.make_machine(vault=vault, name="=HYPERLINK(1)")
    job(machine, ended_at=timezone.now(), sent=MB)
    client.force_login(alice)
    response = client.get(reverse("jobs:report_csv", args=["transferred"]))
    assert response.content.decode().splitlines()[0] == "day,'=HYPERLINK(1) (bytes)"


def test_an_unknown_chart_is_a_404(client, alice, vault):
    client.force_login(alice)
    assert client.get(reverse("jobs:report_csv", args=["nope"])).status_code == 404


# --- who sees what (docs/security.md) ---------------------------------------------------
@pytest.fixture
def other_vault(charlie):
    """Charlie's vault in Fabrikam, with a backup of 9 MB today."""
    subscription = charlie.memberships.get().subscription
    group = builders.make_resource_group(subscription=subscription, name="fab-rg")
    vault = builders.make_vault(resource_group=group, name="fabrikam-vault")
    machine = builders.make_machine(vault=vault, name="fab-secret-01")
    job(machine, ended_at=timezone.now(), sent=9 * MB)
    return vault


def test_a_reader_sees_only_the_vaults_they_may_read(client, member, vault, web, other_vault):
    client.force_login(member(Role.READER))
    job(web, ended_at=timezone.now(), sent=2 * MB)

    page = client.get(reverse("jobs:reports")).content.decode()
    export = client.get(reverse("jobs:report_csv", args=["transferred"])).content.decode()

    assert "web-01" in page and "fab-secret-01" not in page and "fabrikam-vault" not in page
    assert "web-01" in export and "fab-secret-01" not in export
    assert str(9 * MB) not in export


def test_another_subscriptions_vault_or_machine_is_a_404_page_and_csv(
    client, member, vault, other_vault
):
    client.force_login(member(Role.READER))
    theirs = other_vault.machines.get()
    for query in ({"vault": other_vault.pk}, {"machine": theirs.pk}):
        assert client.get(reverse("jobs:reports"), query).status_code == 404
        csv_url = reverse("jobs:report_csv", args=["outcomes"])
        assert client.get(csv_url, query).status_code == 404


def test_an_anonymous_visitor_is_sent_to_sign_in(client):
    for url in (reverse("jobs:reports"), reverse("jobs:report_csv", args=["outcomes"])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("portal:login"))
