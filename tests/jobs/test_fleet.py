"""The Backup center (jobs.services.fleet, jobs.views_fleet): machine states, what each user
sees, filters and CSV, constant queries, and an alert's Acknowledge and Close per role."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import services
from jobs.models import Alert, BackupPolicy, Job
from jobs.services import fleet
from portal.models import Role, Subscription
from tests.jobs.conftest import spec
from tests.support import builders
from tests.support.activity import one_entry
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db

URL = "/backup-center/"


def _machine(vault, name, *, online=True, policy=True, last=None, stopped=False, user=None):
    machine = builders.make_machine(
        vault=vault, name=name, last_seen_at=timezone.now() if online else None
    )
    if policy:
        services.policy_save(machine=machine, spec=spec(), user=user)
    if stopped:
        BackupPolicy.objects.filter(machine=machine).update(
            protection=BackupPolicy.Protection.STOPPED
        )
    if last:
        Job.objects.create(
            vault=vault, machine=machine, operation=Job.Operation.BACKUP, status=last
        )
    return machine


def _alert(machine, kind=Alert.Kind.BACKUP_FAILED, severity=Alert.Severity.CRITICAL):
    return services.alert_raise(
        vault=machine.vault,
        machine=machine,
        kind=kind,
        severity=severity,
        message=f"Backup of {machine.name} failed: disk full",
    )


@pytest.fixture
def fabrikam_vault(charlie):
    """charlie's vault, with a machine and an open alert nobody at Contoso may see."""
    subscription = Subscription.objects.get(memberships__user=charlie)
    group = builders.make_resource_group(subscription=subscription, name="fab-rg")
    vault = builders.make_vault(resource_group=group, name="fabrikam-vault")
    secret = _machine(vault, "fab-secret-01", last=Job.Status.FAILED)
    _alert(secret)
    return vault


def test_each_machine_gets_its_state_and_last_proven_restore(alice, vault):
    ok = _machine(vault, "ok-01", last=Job.Status.COMPLETED)
    _machine(vault, "failed-01", last=Job.Status.FAILED)
    _machine(vault, "offline-01", online=False, last=Job.Status.COMPLETED)
    _machine(vault, "nopolicy-01", policy=False)
    _machine(vault, "stopped-01", stopped=True, last=Job.Status.COMPLETED)
    warned = _machine(vault, "warned-01", last=Job.Status.WARNING)
    proven_at = timezone.now() - timedelta(days=2)
    Job.objects.create(
        vault=vault,
        machine=warned,
        operation=Job.Operation.DRILL,
        status=Job.Status.COMPLETED,
        ended_at=proven_at,
        details={"source_machine": str(ok.pk)},
    )

    found = fleet.fleet_machines(alice, fleet.Filters())

    states = {row.machine.name: row.state for row in found["rows"]}
    assert states == {
        "ok-01": "protected",
        "failed-01": "failed",
        "offline-01": "offline",
        "nopolicy-01": "warning",
        "stopped-01": "stopped",
        "warned-01": "warning",
    }
    assert found["counts"] == {
        "protected": 1,
        "warning": 2,
        "failed": 1,
        "offline": 1,
        "stopped": 1,
    }
    proven = {row.machine.name: row.last_proven_at for row in found["rows"]}
    assert proven["ok-01"] == proven_at and proven["warned-01"] is None
    only_failed = fleet.fleet_machines(alice, fleet.Filters(state="failed"))
    assert [row.machine.name for row in only_failed["rows"]] == ["failed-01"]
    assert only_failed["counts"]["protected"] == 1  # the tiles count every state


def test_an_open_critical_alert_makes_a_machine_failed(alice, vault):
    machine = _machine(vault, "web-01", last=Job.Status.COMPLETED)
    _alert(machine, kind=Alert.Kind.VERIFY_DAMAGE)
    (row,) = fleet.fleet_machines(alice, fleet.Filters())["rows"]
    assert (row.state, row.reason) == ("failed", "A critical alert is open.")


def test_a_reader_of_contoso_never_sees_fabrikam(client, member, vault, fabrikam_vault):
    mine = _machine(vault, "contoso-web-01", last=Job.Status.FAILED)
    _alert(mine)
    client.force_login(member(Role.READER))

    page = client.get(URL).content.decode()
    assert "contoso-web-01" in page and "fab-secret-01" not in page
    assert "fabrikam-vault" not in page
    # Asking for charlie's vault by id shows nothing of it and says so.
    page = client.get(URL, {"vault": str(fabrikam_vault.pk)}).content.decode()
    assert "fab-secret-01" not in page and "No such vault among those you can see" in page
    for export in ("machines.csv", "alerts.csv"):
        text = client.get(URL + export, {"vault": str(fabrikam_vault.pk)}).content.decode()
        assert "fab-secret-01" not in text and "fabrikam" not in text
        assert "contoso-web-01" in text
    # A Reader sees the alert but gets no buttons.
    assert "Acknowledge</button>" not in page


def test_filters_narrow_both_tables_and_the_csv_follows_them(client, alice, vault):
    web = _machine(vault, "web-01", last=Job.Status.FAILED)
    db = _machine(vault, "db-01", last=Job.Status.WARNING)
    _alert(web)
    _alert(db, kind=Alert.Kind.BACKUP_WARNINGS, severity=Alert.Severity.WARNING)
    client.force_login(alice)

    page = client.get(URL, {"q": "web"}).content.decode()
    assert 'data-machine="web-01"' in page and 'data-machine="db-01"' not in page
    page = client.get(URL, {"severity": "warning"}).content.decode()
    assert "Backup completed with warnings" in page and "Backup failure" not in page
    rows = list(
        csv.reader(io.StringIO(client.get(URL + "alerts.csv", {"q": "db"}).content.decode()))
    )
    assert rows[0] == fleet.ALERTS_CSV_HEADER
    assert [r[1] for r in rows[1:]] == ["db-01"]
    rows = list(
        csv.reader(
            io.StringIO(client.get(URL + "machines.csv", {"state": "failed"}).content.decode())
        )
    )
    assert [(r[1], r[3]) for r in rows[1:]] == [("web-01", "Failed")]
    # htmx asks for the results only.
    fragment = client.get(URL, {"q": "web"}, headers={"HX-Request": "true"}).content.decode()
    assert fragment.lstrip().startswith('<div id="backup-center-results">')


def test_a_live_refresh_puts_the_filters_it_shows_in_the_address_when_they_differ(
    client, alice, vault
):
    client.force_login(alice)
    page = f"http://testserver{URL}"

    def refresh(params, current):
        headers = {"HX-Request": "true", "HX-Current-URL": current, fleet.REFRESH_HEADER: "1"}
        return client.get(URL, params, headers=headers)

    # The form holds a vault the address does not: the address follows.
    answer = refresh({"vault": str(vault.pk), "q": "", "show": "open"}, page)
    assert answer["HX-Replace-Url"] == f"{URL}?vault={vault.pk}&show=open"
    # The same filters written otherwise (defaults left out, empty fields): nothing to do.
    answer = refresh({"vault": str(vault.pk), "q": "", "show": "open"}, f"{page}?vault={vault.pk}")
    assert "HX-Replace-Url" not in answer
    # A user's own request (no refresh header) pushes its own address: the portal says nothing.
    answer = client.get(
        URL, {"vault": str(vault.pk)}, headers={"HX-Request": "true", "HX-Current-URL": page}
    )
    assert "HX-Replace-Url" not in answer


def test_a_cell_starting_like_a_formula_is_exported_as_text(client, alice, vault):
    machine = _machine(vault, "=cmd-01", last=Job.Status.FAILED)
    _alert(machine)
    client.force_login(alice)
    text = client.get(URL + "machines.csv").content.decode()
    assert "'=cmd-01" in text


def _count_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(URL, {"show": "all"}).status_code == 200
    return len(queries)


def test_the_page_takes_the_same_queries_for_2_or_8_machines(client, member, alice, vault):
    """bob, Backup Operator on two subscriptions, sees the buttons in both."""
    bob = member(Role.BACKUP_OPERATOR)
    client.force_login(bob)
    for index in range(2):
        _alert(_machine(vault, f"a-{index}", last=Job.Status.FAILED))
    few = _count_queries(client)
    second = builders.make_subscription(
        owner=alice, name="Northwind", members={bob: Role.BACKUP_OPERATOR}
    )
    group = builders.make_resource_group(subscription=second, name="nw-rg")
    other = builders.make_vault(resource_group=group, name="vault-two")
    for index in range(6):
        machine = _machine(other if index % 2 else vault, f"b-{index}", last=Job.Status.FAILED)
        alert = _alert(machine)
        fleet.alert_acknowledge(alert=alert, user=alice)
    assert _count_queries(client) == few
    page = client.get(URL, {"vault": str(other.pk)}).content.decode()
    assert page.count("Close</button>") == 3


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.READER, False),
        (Role.BACKUP_OPERATOR, True),
        (Role.CONTRIBUTOR, True),
        (Role.OWNER, True),
    ],
)
def test_acknowledge_and_close_need_backup_operator(client, member, vault, role, allowed):
    alert = _alert(_machine(vault, "web-01", last=Job.Status.FAILED))
    bob = member(role)
    client.force_login(bob)

    response = client.post(f"{URL}alerts/{alert.pk}/acknowledge/", {"next": URL})
    alert.refresh_from_db()
    if not allowed:
        assert response.status_code == 403
        assert alert.acknowledged_at is None
        one_entry(operation="alert.acknowledge", outcome="refused", username="bob")
        assert client.post(f"{URL}alerts/{alert.pk}/close/").status_code == 403
        alert.refresh_from_db()
        assert alert.resolved_at is None
        return
    assert response.status_code == 302 and response["Location"] == URL
    assert alert.acknowledged_by == bob and alert.acknowledged_at is not None
    assert alert.state == Alert.State.ACKNOWLEDGED
    one_entry(
        operation="alert.acknowledge", outcome="succeeded", username="bob", resource_kind="alert"
    )
    page = client.get(URL).content.decode()
    assert "Acknowledged</span>" in page and "by bob" in page

    assert client.post(f"{URL}alerts/{alert.pk}/close/").status_code == 302
    alert.refresh_from_db()
    assert alert.closed_by == bob and alert.state == Alert.State.CLOSED
    one_entry(operation="alert.close", outcome="succeeded", username="bob")


def test_an_outsider_cannot_touch_an_alert(client, charlie, vault):
    alert = _alert(_machine(vault, "web-01", last=Job.Status.FAILED))
    client.force_login(charlie)
    assert client.post(f"{URL}alerts/{alert.pk}/acknowledge/").status_code == 404
    assert client.post(f"{URL}alerts/{alert.pk}/close/").status_code == 404
    assert client.post(f"{URL}alerts/999999/close/").status_code == 404
    assert not ActivityEntry.objects.filter(operation__startswith="alert.").exists()


def test_an_offsite_next_is_not_followed(client, alice, vault):
    alert = _alert(_machine(vault, "web-01", last=Job.Status.FAILED))
    client.force_login(alice)
    response = client.post(f"{URL}alerts/{alert.pk}/acknowledge/", {"next": "https://evil.test/"})
    assert response["Location"] == URL


def test_an_acknowledged_alert_raised_again_stays_acknowledged_and_a_closed_one_is_new(
    alice, vault
):
    machine = _machine(vault, "web-01", last=Job.Status.FAILED)
    alert = _alert(machine)
    assert fleet.alert_acknowledge(alert=alert, user=alice) is True
    assert fleet.alert_acknowledge(alert=alert, user=alice) is False  # once
    again = _alert(machine)
    again.refresh_from_db()
    assert again.pk == alert.pk and again.occurrences == 2
    assert again.state == Alert.State.ACKNOWLEDGED

    assert fleet.alert_close(alert=again, user=alice) is True
    with pytest.raises(fleet.AlertClosed):
        fleet.alert_acknowledge(alert=again, user=alice)
    fresh = _alert(machine)
    assert fresh.pk != alert.pk and fresh.state == Alert.State.ACTIVE
    assert ActivityEntry.objects.filter(operation="alert.acknowledge").count() == 1


def test_the_api_lists_who_acknowledged_an_alert(client, alice, vault):
    alert = _alert(_machine(vault, "web-01", last=Job.Status.FAILED))
    fleet.alert_acknowledge(alert=alert, user=alice)
    client.force_login(alice)
    (row,) = client.get("/api/v1/alerts/").json()["results"]
    assert (row["alert_state"], row["acknowledged_by"], row["closed_by"]) == (
        "acknowledged",
        "alice",
        None,
    )
