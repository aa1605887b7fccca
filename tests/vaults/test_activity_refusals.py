"""A refusal repeated in a loop (a Reader, a stolen token) is one activity entry with a
count, not a row per try: the same actor, operation, target and reason within ten minutes
of the clock. Anything else is still a row of its own, and the count is shown."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portal import tokens
from portal.models import Role
from tests.support import builders
from tests.support.activity import clear_of_a_window_edge
from vaults import activity
from vaults.activity import Operation, Outcome
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _clear_of_a_window_edge():
    clear_of_a_window_edge()


def test_fifty_refused_posts_are_one_entry_counted_fifty_times(client, vault, member):
    reader = member(Role.READER)
    client.force_login(reader)
    url = reverse("vaults:delete", args=[vault.pk])
    for _ in range(50):
        assert client.post(url, {"confirm_name": vault.name}).status_code == 403
    entry = ActivityEntry.objects.get()
    assert (entry.operation, entry.outcome, entry.username) == (
        Operation.VAULT_DELETE,
        Outcome.REFUSED,
        "bob",
    )
    assert entry.repeat_count == 50
    assert entry.at <= entry.last_at < entry.at + activity.COALESCE_WINDOW

    page = client.get(reverse("vaults:activity", args=[vault.pk])).content.decode()
    assert "50 times, last at" in page
    assert page.count('data-operation="vault.delete"') == 1
    rows = list(
        csv.reader(
            io.StringIO(
                b"".join(
                    client.get(reverse("vaults:activity-export", args=[vault.pk])).streaming_content
                ).decode()
            )
        )
    )
    assert len(rows) == 2
    assert rows[1][activity.CSV_HEADER.index("Times")] == "50"


def test_a_stolen_tokens_loop_shows_its_count_in_the_api(vault, member, alice):
    reader = member(Role.READER)
    _, secret = tokens.token_create(user=reader, name="scripts", days=7)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    for _ in range(5):
        response = api.put(
            f"/api/v1/vaults/{vault.pk}/redundancy/",
            {"redundancy": "lrs"},
            content_type="application/json",
        )
        assert response.status_code == 403
    _, owners = tokens.token_create(user=alice, name="audit", days=7)
    listed = Client(HTTP_AUTHORIZATION=f"Bearer {owners}").get(
        "/api/v1/activity/", {"outcome": "refused"}
    )
    [entry] = listed.json()["results"]
    assert (entry["operation"], entry["username"], entry["repeat_count"]) == (
        Operation.REDUNDANCY_CHANGE,
        "bob",
        5,
    )
    assert entry["last_at"] >= entry["at"]


def test_another_reason_target_actor_or_operation_is_its_own_entry(vault, member, charlie):
    bob = member(Role.READER)
    other = builders.make_vault(resource_group=vault.resource_group, name="vault-two")
    machine = builders.make_machine(vault=vault, name="web-01")

    def refuse(**fields):
        fields = {"user": bob, "vault": vault, "reason": "needs Contributor", **fields}
        activity.record(
            operation=fields.pop("operation", Operation.BACKUP_NOW),
            outcome=Outcome.REFUSED,
            **fields,
        )

    for _ in range(3):
        refuse()
        refuse(reason="protection stopped")
        refuse(vault=other)
        refuse(resource=machine)
        refuse(operation=Operation.VERIFY_NOW)
        refuse(user=charlie)
    assert sorted(ActivityEntry.objects.values_list("repeat_count", flat=True)) == [3] * 6
    # What the person typed (the detail) does not make a try new: a loop that changes it on
    # each try is still one entry, keeping the first try's detail.
    for n in range(5):
        refuse(reason="typed", detail={"reason": f"try {n}"})
    typed = ActivityEntry.objects.get(reason="typed")
    assert (typed.repeat_count, typed.detail) == (5, {"reason": "try 0"})
    # Succeeded (and failed) entries are never counted together.
    for _ in range(2):
        activity.record(operation=Operation.BACKUP_NOW, user=bob, vault=vault)
    assert ActivityEntry.objects.filter(outcome=Outcome.SUCCEEDED).count() == 2


def test_the_first_refusal_is_a_row_at_once_and_a_new_window_starts_a_new_row(vault, bob):
    def entry_at(at):
        entry = ActivityEntry(
            user=bob,
            username="bob",
            operation=Operation.BACKUP_NOW,
            subscription_id=vault.subscription_id,
            vault_id=vault.pk,
            outcome=Outcome.REFUSED,
            reason="no",
            at=at,
        )
        return activity._refusal_counted(entry)

    start = datetime(2026, 12, 6, 16, 0, 5, tzinfo=UTC)
    first = entry_at(start)
    assert ActivityEntry.objects.get(pk=first.pk).repeat_count == 1
    assert entry_at(start + timedelta(minutes=9)).pk == first.pk
    later = entry_at(start + timedelta(minutes=10))
    assert later.pk != first.pk
    assert list(ActivityEntry.objects.order_by("at").values_list("repeat_count", "last_at")) == [
        (2, start + timedelta(minutes=9)),
        (1, start + timedelta(minutes=10)),
    ]


def test_each_repeat_is_one_statement(vault, bob):
    activity.record(operation=Operation.BACKUP_NOW, user=bob, vault=vault, outcome=Outcome.REFUSED)
    with CaptureQueriesContext(connection) as queries:
        activity.record(
            operation=Operation.BACKUP_NOW, user=bob, vault=vault, outcome=Outcome.REFUSED
        )
    assert len(queries) == 1
    assert "ON CONFLICT" in queries[0]["sql"]
    assert ActivityEntry.objects.get().repeat_count == 2


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the database-level guard is a PostgreSQL trigger",
)
def test_postgresql_lets_a_count_go_up_and_nothing_else_change(alice, vault):
    refused = activity.record(
        operation=Operation.BACKUP_NOW, user=alice, vault=vault, outcome=Outcome.REFUSED
    )
    done = activity.record(operation=Operation.BACKUP_NOW, user=alice, vault=vault)
    table = ActivityEntry._meta.db_table
    for sql, pk in (
        (f"UPDATE {table} SET repeat_count = 0 WHERE id = %s", refused.pk),
        (
            f"UPDATE {table} SET repeat_count = repeat_count + 1, reason = 'x' WHERE id = %s",
            refused.pk,
        ),
        (
            f"UPDATE {table} SET last_at = last_at - interval '1 day', repeat_count = 9 WHERE id = %s",
            refused.pk,
        ),
        (f"UPDATE {table} SET repeat_count = 9, last_at = now() WHERE id = %s", done.pk),
        (f"DELETE FROM {table} WHERE id = %s", refused.pk),
    ):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [pk])
    activity.record(
        operation=Operation.BACKUP_NOW, user=alice, vault=vault, outcome=Outcome.REFUSED
    )
    assert ActivityEntry.objects.get(pk=refused.pk).repeat_count == 2
    assert ActivityEntry.objects.get(pk=done.pk).repeat_count == 1


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="concurrent writers: PostgreSQL (SQLite serialises its one writer)",
)
@pytest.mark.django_db(transaction=True)
def test_concurrent_repeats_are_one_entry_with_every_try_counted(alice, vault):
    """Eight portal threads refusing the same request at once: no second row, no lost count."""

    def loop():
        try:
            for _ in range(10):
                activity.record(
                    operation=Operation.BACKUP_NOW, user=alice, vault=vault, outcome=Outcome.REFUSED
                )
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(loop) for _ in range(8)]:
            future.result(timeout=60)
    assert list(ActivityEntry.objects.values_list("repeat_count", flat=True)) == [80]
