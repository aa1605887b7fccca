"""What the endpoints do: the same rules and words as the portal's pages (they call the same
services), the same activity log entries, filters that refuse a bad value by name, lists
in a constant number of queries, and ids from another subscription refused."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import policy_rules
from jobs.models import Alert, Job, WebhookDelivery
from jobs.services import webhooks
from portal.models import Role
from tests.api.conftest import make_point, policy_spec
from tests.support import builders
from vaults import selectors
from vaults import services as vault_services
from vaults.models import ActivityEntry, Vault

pytestmark = pytest.mark.django_db


def test_creating_a_vault_records_it_and_breaks_rules_in_the_wizards_words(
    api, alice, subscription, resource_group
):
    client = api(alice)
    body = {"subscription": str(subscription.pk), "location": "West Europe"}
    refused = client.post("/api/v1/vaults/", body | {"name": "1-bad", "new_resource_group": "x"})
    assert refused.status_code == 400
    expected = vault_services.vault_create_problems(
        name="1-bad", location="West Europe", subscription=subscription
    )
    assert refused.json()["name"] == expected["name"]
    made = client.post(
        "/api/v1/vaults/", body | {"name": "vault-api", "resource_group": resource_group.pk}
    )
    assert made.status_code == 201
    assert made.json()["state"] == Vault.State.DEPLOYING
    entry = ActivityEntry.objects.get(operation=ActivityEntry.Operation.VAULT_CREATE)
    assert (entry.username, entry.vault_name) == ("alice", "vault-api")
    assert entry.address == "127.0.0.1"


def test_a_policy_breaks_the_editors_rules_with_the_editors_field_names(api, alice, world):
    client = api(alice)
    path = f"/api/v1/machines/{world.machine.pk}/policy/"
    bad = policy_spec(times=["25:00"], frequency="weekly", weekdays=[])
    answer = client.put(path, {"spec": bad})
    assert answer.status_code == 400
    assert answer.json() == policy_rules.spec_problems(bad)
    junk = client.put(path, {"spec": {"items": "/srv", "times": "noon", "retention": []}})
    assert junk.status_code == 400
    assert {"items", "times", "frequency", "retention"} <= set(junk.json()["spec"])
    assert client.put(path, {"spec": "all of it"}).status_code == 400

    good = client.put(path, {"spec": policy_spec(times=["03:00"])})
    assert good.status_code == 200
    assert good.json()["version"] == 2
    assert good.json()["spec"]["times"] == ["03:00"]
    change = ActivityEntry.objects.filter(operation=ActivityEntry.Operation.POLICY_CHANGE).first()
    assert change.username == "alice"
    assert change.detail["changes"]["times"] == {"from": ["00:00", "18:00"], "to": ["03:00"]}


def test_lowering_retention_needs_the_security_pin_as_in_the_editor(api, alice, world):
    lower = policy_spec()
    lower["retention"]["monthly"]["months"] = 6
    answer = api(alice).put(f"/api/v1/machines/{world.machine.pk}/policy/", {"spec": lower})
    assert answer.status_code == 400
    assert "security_pin" in answer.json()


def test_back_up_now_starts_one_backup_at_a_time(api, alice, world):
    client = api(alice)
    path = f"/api/v1/machines/{world.machine.pk}/backup/"
    first = client.post(path, {"retain_until": None})
    assert first.status_code == 202
    assert first.json()["operation"] == "backup"
    second = client.post(path, {})
    assert second.status_code == 409
    assert first.json()["id"] in second.json()["detail"]
    past = client.post(path, {"retain_until": "2001-01-01"})
    assert past.status_code in (400, 409)
    assert ActivityEntry.objects.filter(operation=ActivityEntry.Operation.BACKUP_NOW).count() == 1
    detail = client.get(f"/api/v1/jobs/{first.json()['id']}/")
    assert detail.json()["status"] in ("queued", "waiting")


def test_a_finished_job_is_not_cancelled(api, alice, world):
    Job.objects.filter(pk=world.job.pk).update(status=Job.Status.COMPLETED)
    answer = api(alice).post(f"/api/v1/jobs/{world.job.pk}/cancel/")
    assert answer.status_code == 409
    assert "nothing to cancel" in answer.json()["detail"]


def test_jobs_filter_by_each_field_and_refuse_a_bad_value_by_name(api, alice, world):
    client = api(alice)
    other = Job.objects.create(
        vault=world.vault, machine=world.machine, operation=Job.Operation.BACKUP
    )
    Job.objects.filter(pk=other.pk).update(created_at=timezone.now() - timedelta(days=3))
    ids = lambda **q: [j["id"] for j in client.get("/api/v1/jobs/", q).json()["results"]]  # noqa: E731
    assert ids(operation="backup") == [str(other.pk)]
    assert ids(status="queued", operation="restore") == [str(world.job.pk)]
    assert ids(created_after=(timezone.now() - timedelta(days=1)).isoformat()) == [
        str(world.job.pk)
    ]
    assert ids(machine=str(world.far_machine.pk)) == []
    for name, value in (("status", "done"), ("vault", "not-a-uuid"), ("created_after", "x")):
        answer = client.get("/api/v1/jobs/", {name: value})
        assert answer.status_code == 400
        assert list(answer.json()) == [name]


def test_restore_onto_another_subscriptions_machine_is_refused(api, alice, charlie, world):
    client = api(alice)
    path = f"/api/v1/machines/{world.machine.pk}/restore/"
    body = {"recovery_point": "snap-1", "paths": ["/srv/a"], "target": str(world.far_machine.pk)}
    assert client.post(path, body).status_code == 404
    far = f"/api/v1/machines/{world.far_machine.pk}/restore/"
    assert (
        client.post(far, body | {"target": None, "recovery_point": "far-snap"}).status_code == 404
    )
    assert api(charlie).post(path, body | {"target": None}).status_code == 404
    wrong_point = client.post(path, {"recovery_point": "far-snap", "paths": ["/srv/a"]})
    assert wrong_point.status_code == 400
    assert "recovery point" in wrong_point.json()["detail"]
    assert not Job.objects.filter(details__recovery_point="far-snap").exists()


def test_a_vault_cannot_go_in_another_subscriptions_resource_group(api, alice, world, subscription):
    far_group = world.far_vault.resource_group
    answer = api(alice).post(
        "/api/v1/vaults/",
        {
            "subscription": str(subscription.pk),
            "resource_group": far_group.pk,
            "name": "vault-x",
            "location": "West Europe",
        },
    )
    assert answer.status_code == 400
    assert list(answer.json()) == ["resource_group"]


def test_a_redundancy_change_after_the_first_machine_is_refused_in_the_pages_words(
    api, alice, world
):
    answer = api(alice).put(f"/api/v1/vaults/{world.vault.pk}/redundancy/", {"redundancy": "lrs"})
    assert answer.status_code == 400
    assert answer.json()["redundancy"] == [selectors.vault_redundancy_locked_reason(world.vault)]
    assert ActivityEntry.objects.filter(
        operation=ActivityEntry.Operation.REDUNDANCY_CHANGE, outcome="refused"
    ).exists()


def test_alerts_show_active_resolved_or_all(api, alice, world):
    client = api(alice)
    Alert.objects.create(
        vault=world.vault,
        machine=world.machine,
        severity=Alert.Severity.WARNING,
        kind=Alert.Kind.NO_RECENT_BACKUP,
        message="No backup in 3 days.",
        resolved_at=timezone.now(),
    )
    counts = {
        s: client.get("/api/v1/alerts/", {"state": s}).json()["count"]
        for s in ("active", "resolved", "all")
    }
    assert counts == {"active": 1, "resolved": 1, "all": 2}


def test_a_backup_operator_acknowledges_then_closes_an_alert_through_the_pages_service(
    api, alice, member, world
):
    webhooks.webhook_add(
        vault=world.vault,
        user=alice,
        name="chat",
        url="https://hooks.example.test/x",
        format="slack",
    )
    client = api(member(Role.BACKUP_OPERATOR))
    url = f"/api/v1/alerts/{world.alert.pk}"
    answer = client.post(f"{url}/acknowledge/")
    assert answer.status_code == 200
    assert (answer.json()["alert_state"], answer.json()["acknowledged_by"]) == (
        "acknowledged",
        "bob",
    )
    world.alert.refresh_from_db()
    assert world.alert.acknowledged_by.username == "bob" and world.alert.resolved_at is None
    # Twice changes nothing and logs nothing the second time.
    assert client.post(f"{url}/acknowledge/").status_code == 200
    acks = ActivityEntry.objects.filter(operation=ActivityEntry.Operation.ALERT_ACKNOWLEDGE)
    assert [(e.username, e.outcome, e.address) for e in acks] == [
        ("bob", ActivityEntry.Outcome.SUCCEEDED, "127.0.0.1")
    ]

    answer = client.post(f"{url}/close/")
    assert answer.status_code == 200
    assert (answer.json()["alert_state"], answer.json()["closed_by"]) == ("closed", "bob")
    assert answer.json()["active"] is False and answer.json()["resolved_at"]
    world.alert.refresh_from_db()
    assert world.alert.closed_by.username == "bob" and world.alert.resolved_at is not None

    # Closed is final: closing again or acknowledging is a 409 that says why.
    again = client.post(f"{url}/close/")
    assert again.status_code == 409
    assert again.json()["detail"].startswith("This alert is already closed (by bob)")
    late = client.post(f"{url}/acknowledge/")
    assert late.status_code == 409
    assert late.json()["detail"] == "This alert is closed; there is nothing to acknowledge."
    closes = ActivityEntry.objects.filter(operation=ActivityEntry.Operation.ALERT_CLOSE)
    assert closes.count() == 1
    # The same events as the Backup center's buttons send to the vault's webhooks.
    events = WebhookDelivery.objects.filter(alert=world.alert).order_by("id")
    assert [d.event for d in events] == ["alert.acknowledged", "alert.closed"]


def test_a_reader_gets_403_and_another_subscriptions_alert_is_404(
    api, alice, member, charlie, world
):
    reader = api(member(Role.READER))
    for action in ("acknowledge", "close"):
        answer = reader.post(f"/api/v1/alerts/{world.alert.pk}/{action}/")
        assert answer.status_code == 403
        assert answer.json()["detail"]
    world.alert.refresh_from_db()
    assert world.alert.acknowledged_at is None and world.alert.resolved_at is None
    refused = ActivityEntry.objects.filter(outcome=ActivityEntry.Outcome.REFUSED, username="bob")
    assert sorted(e.operation for e in refused) == ["alert.acknowledge", "alert.close"]

    far = Alert.objects.create(
        vault=world.far_vault,
        machine=world.far_machine,
        severity=Alert.Severity.WARNING,
        kind=Alert.Kind.NO_RECENT_BACKUP,
        message="No backup in 3 days.",
    )
    owner, outsider = api(alice), api(charlie)
    for action in ("acknowledge", "close"):
        assert owner.post(f"/api/v1/alerts/{far.pk}/{action}/").status_code == 404
        assert outsider.post(f"/api/v1/alerts/{world.alert.pk}/{action}/").status_code == 404
        assert owner.post(f"/api/v1/alerts/99999999999999/{action}/").status_code == 404
    far.refresh_from_db()
    assert far.acknowledged_at is None and far.resolved_at is None
    assert not ActivityEntry.objects.filter(vault_id=world.far_vault.pk).exists()


def _queries(client, path) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(path).status_code == 200
    return len(captured)


def _grow(world, alice, n: int) -> None:
    """n more rows of every kind the lists show (policy rows written directly: only their
    presence matters here)."""
    from jobs.models import BackupPolicy

    for i in range(n):
        group = builders.make_resource_group(subscription=world.subscription, name=f"rg-{i}")
        vault = builders.make_vault(resource_group=group, name=f"vault-{i}")
        machine = builders.make_machine(vault=vault, name=f"m-{i}")
        policy = BackupPolicy(machine=machine)
        policy.set_spec(policy_spec())
        policy.save()
        Job.objects.create(vault=vault, machine=machine, operation=Job.Operation.BACKUP)
        make_point(world.machine, f"snap-extra-{i}")
        Alert.objects.create(
            vault=vault, machine=machine, severity="warning", kind="no_recent_backup", message="m"
        )
        builders.make_subscription(owner=alice, name=f"Sub {i}")


def test_every_list_takes_the_same_queries_for_1_and_20_rows(api, alice, world):
    client = api(alice)
    paths = [
        "/api/v1/subscriptions/",
        "/api/v1/resource-groups/",
        "/api/v1/vaults/",
        "/api/v1/machines/",
        "/api/v1/jobs/",
        f"/api/v1/machines/{world.machine.pk}/recovery-points/",
        "/api/v1/alerts/",
        "/api/v1/activity/",
    ]
    client.get("/api/v1/me/")  # the token's last use is written once a minute: not counted
    few = {p: _queries(client, p) for p in paths}
    _grow(world, alice, 20)
    many = {p: _queries(client, p) for p in paths}
    assert many == few
    rows = client.get("/api/v1/vaults/", {"page_size": 5}).json()
    assert (rows["count"], len(rows["results"])) == (22, 5)
    assert rows["next"]


def test_drf_spectacular_describes_every_endpoint_without_a_guess(tmp_path):
    from django.core.management import call_command

    target = tmp_path / "schema.yaml"
    # (openapi-core validates the document itself when the API tests load it: conftest.py)
    call_command("spectacular", "--fail-on-warn", "--file", str(target))
    text = target.read_text()
    assert "bearer" in text and "/api/v1/machines/{machine_id}/restore/" in text
    served = Client().get("/api/v1/schema/", {"format": "json"})
    assert served.status_code == 200
    assert "/api/v1/jobs/{job_id}/cancel/" in served.json()["paths"]
    assert b"openapi: 3" in Client().get("/api/v1/schema/").content


def test_an_endpoint_that_does_not_exist_is_a_json_404(api, alice):
    client = api(alice).client
    answer = client.get("/api/v1/nothing-here/")
    assert answer.status_code == 404
    assert "/api/v1/docs/" in answer.json()["detail"]
    assert "text/html" in client.get("/nothing-here/")["Content-Type"]


def test_the_database_going_away_is_a_json_503_and_a_bug_a_json_500(settings):
    from django.db import OperationalError
    from django.test import RequestFactory

    from portal.concurrency import server_error

    request = RequestFactory().get("/api/v1/jobs/")
    try:
        raise OperationalError("server closed the connection unexpectedly")
    except OperationalError:
        busy = server_error(request)
    assert busy.status_code == 503
    assert json.loads(busy.content)["detail"].startswith("The portal is busy")
    assert busy["Retry-After"] == str(settings.HAVEN_PORTAL_RETRY_AFTER)
    try:
        raise ValueError("a bug")
    except ValueError:
        broken = server_error(request)
    assert (broken.status_code, broken["Content-Type"]) == (500, "application/json")
