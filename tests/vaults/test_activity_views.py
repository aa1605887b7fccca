"""The activity log pages: the vault's and the subscription's, their filters, the CSV
export, and who may see them (Readers, not outsiders; nobody may change them)."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from portal.models import Role
from tests.support import builders
from vaults import activity
from vaults.activity import Operation, Outcome
from vaults.models import ActivityEntry
from vaults.selectors import ACTIVITY_PAGE_SIZE

pytestmark = pytest.mark.django_db


def _log(vault, user, operation=Operation.BACKUP_NOW, **fields):
    return activity.record(operation=operation, user=user, vault=vault, **fields)


def _urls(vault):
    """Every activity log URL that shows ``vault``'s entries."""
    return [
        reverse("vaults:activity", args=[vault.pk]),
        reverse("vaults:activity-export", args=[vault.pk]),
        reverse("vaults:subscription-activity", args=[vault.subscription_id]),
        reverse("vaults:subscription-activity-export", args=[vault.subscription_id]),
    ]


def test_a_reader_sees_the_log_and_an_outsider_does_not(client, vault, alice, member, charlie):
    _log(vault, alice, resource=activity.Resource("machine", "1", "web-01"))
    client.force_login(member(Role.READER))
    page = client.get(reverse("vaults:activity", args=[vault.pk]))
    assert page.status_code == 200
    assert "Back up now" in page.content.decode() and "web-01" in page.content.decode()
    client.force_login(charlie)
    for url in _urls(vault):
        assert client.get(url).status_code == 404


@pytest.mark.parametrize("method", ["post", "delete"])
def test_nobody_can_change_the_log_through_the_pages(client, vault, alice, method):
    entry = _log(vault, alice)
    client.force_login(alice)  # the Owner
    for url in _urls(vault):
        assert getattr(client, method)(url).status_code == 405
    assert ActivityEntry.objects.get().reason == entry.reason


def test_filters_by_operation_user_outcome_and_time(client, vault, alice, member):
    bob = member(Role.CONTRIBUTOR)
    _log(vault, alice, Operation.VAULT_CREATE)
    _log(vault, bob, Operation.VAULT_DELETE, outcome=Outcome.REFUSED, reason="1 machine")
    _log(vault, bob, Operation.CREDENTIALS_DOWNLOAD)
    client.force_login(alice)
    url = reverse("vaults:activity", args=[vault.pk])

    def shown(**query):
        html = client.get(url, query).content.decode()
        return sorted(op for op, _ in Operation.choices if f'data-operation="{op}"' in html)

    assert shown() == sorted(
        [Operation.VAULT_CREATE, Operation.VAULT_DELETE, Operation.CREDENTIALS_DOWNLOAD]
    )
    assert shown(operation=Operation.VAULT_DELETE) == [Operation.VAULT_DELETE]
    assert shown(user="bob") == sorted([Operation.VAULT_DELETE, Operation.CREDENTIALS_DOWNLOAD])
    assert shown(outcome="refused") == [Operation.VAULT_DELETE]
    # The operation filter offers what the log holds, nothing it cannot show.
    offered = client.get(url).content.decode()
    assert ">Delete vault</option>" in offered and "Use security PIN" not in offered
    tomorrow = (timezone.localdate() + timedelta(days=1)).isoformat()
    assert shown(range="custom", start=tomorrow) == []
    assert shown(operation="nonsense", range="nonsense", start="x") == shown()


def test_the_page_costs_the_same_queries_for_3_or_60_entries(client, vault, alice):
    client.force_login(alice)
    url = reverse("vaults:activity", args=[vault.pk])

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        return len(ctx)

    for _ in range(3):
        _log(vault, alice)
    few = queries()
    for _ in range(57):
        _log(vault, alice)
    assert queries() == few


def test_the_csv_export_is_filtered_and_safe_in_a_spreadsheet(client, vault, alice):
    _log(vault, alice, Operation.VAULT_CREATE)
    _log(
        vault,
        alice,
        Operation.MACHINE_RENAME,
        resource=activity.Resource("machine", "7", '=HYPERLINK("http://evil")'),
        detail={"from": "web-01", "to": "@SUM(1)"},
    )
    client.force_login(alice)
    response = client.get(
        reverse("vaults:activity-export", args=[vault.pk]), {"operation": Operation.MACHINE_RENAME}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == activity.CSV_HEADER
    assert len(rows) == 2
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["Operation"] == "Rename machine" and row["Initiated by"] == "alice"
    assert row["Resource"] == '\'=HYPERLINK("http://evil")'
    assert not any(cell.startswith(activity.FORMULA_STARTS) for cell in rows[1])


def test_the_export_streams_every_row_in_batches(client, vault, alice, monkeypatch):
    from vaults import selectors

    for _ in range(7):
        _log(vault, alice)
    batch = selectors.activity_batch
    monkeypatch.setattr(
        selectors,
        "activity_batch",
        lambda qs, *, after=None, size=500: batch(qs, after=after, size=3),
    )
    client.force_login(alice)
    response = client.get(reverse("vaults:activity-export", args=[vault.pk]))
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 1 + 7


def test_the_subscription_log_keeps_a_deleted_vaults_entries_and_role_changes(
    client, alice, subscription, resource_group
):
    gone = builders.make_vault(resource_group=resource_group, name="vault-gone")
    _log(gone, alice, Operation.VAULT_DELETE)
    gone_id = gone.pk
    gone.delete()
    activity.record(
        operation=Operation.ROLE_ADD,
        user=alice,
        subscription=subscription,
        resource=activity.Resource("role assignment", "3", "bob"),
    )
    client.force_login(alice)
    html = client.get(
        reverse("vaults:subscription-activity", args=[subscription.pk])
    ).content.decode()
    assert "vault-gone" in html and "Add role assignment" in html
    assert ActivityEntry.objects.filter(vault_id=gone_id).exists()


def test_a_long_log_pages_with_its_filters_kept_on_both_activity_pages(client, vault, alice):
    """The vault's log and the administrators' Sign-in activity share one pager: 51
    entries are two pages, and Next keeps the filters and shows the oldest entry."""
    for n in range(ACTIVITY_PAGE_SIZE + 1):
        _log(vault, alice, resource=activity.Resource("machine", str(n), f"web-{n:02}"))
        activity.record(
            operation=Operation.SIGNIN_LOCKOUT,
            outcome=Outcome.REFUSED,
            actor="anonymous",
            resource=activity.Resource("user account", "", ""),
            reason=f"Sign-in paused, try {n:02}.",
            detail={"user_name_tried": f"guess-{n:02}"},
        )
    admin = builders.make_user(username="root", is_superuser=True, is_staff=True)
    for user, url, oldest in [
        (alice, reverse("vaults:activity", args=[vault.pk]), "web-00"),
        (admin, reverse("portal:signin-activity"), "guess-00"),
    ]:
        client.force_login(user)
        first = client.get(url, {"range": "all"}).content.decode()
        assert "Page 1 of 2" in first and oldest not in first
        next_link = re.search(r'href="\?([^"]*page=2)">Next</a>', first)
        assert next_link and "range=all" in next_link.group(1)
        second = client.get(f"{url}?{next_link.group(1).replace('&amp;', '&')}")
        assert "Page 2 of 2" in second.content.decode() and oldest in second.content.decode()


def test_details_are_in_words_and_times_as_the_log_shows_them(client, vault, alice, settings):
    """No setting's code name, value code or ISO 8601 time reaches the page."""
    settings.TIME_ZONE = "Europe/Amsterdam"
    _log(vault, alice, Operation.REDUNDANCY_CHANGE, detail={"from": "grs", "to": "lrs"})
    _log(
        vault, alice, Operation.CREDENTIALS_DOWNLOAD,
        detail={"role": "backup_operator", "single_use": True,
                "expires_at": "2026-12-07T09:30:12.345678+00:00"},
    )  # fmt: skip
    _log(
        vault, alice, Operation.POLICY_CHANGE,
        detail={"version": 2, "changes": {
            "retention.daily.days": {"from": 7, "to": 30},
            "weekdays": {"from": [5], "to": [0, 5]},
            "retention.monthly.week": {"from": "last", "to": "first"},
        }},
    )  # fmt: skip
    client.force_login(alice)
    html = client.get(reverse("vaults:activity", args=[vault.pk])).content.decode()
    details = " | ".join(
        re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cell)).strip()
        for cell in re.findall(r'<td class="activity-details">(.*?)</td>', html, re.S)
    )
    for words in (
        "Geo-redundant → Locally-redundant",
        "Role: Backup Operator",
        "Single use: yes",
        "Expires: 2026-12-07 10:30",  # the portal's zone, as the Time column
        "Daily points kept (days): 7 → 30",
        "Backup days: Saturday → Monday, Saturday",
        "Monthly retention, week of the month: Last → First",
        "Policy version: 2",
    ):
        assert words in details, words
    for raw in ("grs", "backup_operator", "retention.", "T09:30", "weekdays", "Expires at"):
        assert raw not in details, raw
