"""The activity log's service: what ``record`` stores, and that nobody changes or deletes
an entry — not through a model, not through a queryset, and on PostgreSQL not even in SQL."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connection, transaction
from django.test import RequestFactory

from portal.models import Role
from tests.support import builders
from vaults import activity
from vaults.activity import Operation, Outcome
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db


def _request(user, *, remote="203.0.113.9", forwarded=None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    request = RequestFactory().post("/", **extra)
    request.user = user
    return request


def test_it_records_who_what_where_and_on_which_resource(alice, vault):
    machine = builders.make_machine(vault=vault, name="web-01")
    entry = activity.record(
        operation=Operation.MACHINE_RENAME,
        request=_request(alice),
        vault=vault,
        resource=machine,
        detail={"from": "web-0", "to": "web-01", "id": machine.pk},
    )
    entry = ActivityEntry.objects.get(pk=entry.pk)
    assert (entry.user, entry.username, entry.address) == (alice, "alice", "203.0.113.9")
    assert entry.subscription_id == vault.subscription_id
    assert (entry.vault_id, entry.vault_name) == (vault.pk, "vault-one")
    assert (entry.resource_kind, entry.resource_id, entry.resource_name) == (
        "machine",
        str(machine.pk),
        "web-01",
    )
    assert entry.outcome == Outcome.SUCCEEDED
    assert entry.detail == {"from": "web-0", "to": "web-01", "id": str(machine.pk)}


def test_the_address_is_the_forwarded_one_only_behind_a_trusted_proxy(settings, alice, vault):
    import ipaddress

    spoofed = _request(alice, remote="198.51.100.7", forwarded="10.9.9.9")
    assert activity.record(operation=Operation.BACKUP_NOW, request=spoofed).address == (
        "198.51.100.7"
    )
    settings.HAVEN_TRUSTED_PROXIES = [ipaddress.ip_network("10.0.0.0/8")]
    proxied = _request(alice, remote="10.0.0.2", forwarded="192.0.2.1, 198.51.100.8")
    assert activity.record(operation=Operation.BACKUP_NOW, request=proxied).address == (
        "198.51.100.8"
    )


def test_a_too_low_role_is_refused_and_recorded(member, vault):
    reader = member(Role.READER)
    with pytest.raises(PermissionDenied):
        activity.require_role(
            _request(reader),
            vault=vault,
            role=Role.CONTRIBUTOR,
            operation=Operation.VAULT_DELETE,
        )
    entry = ActivityEntry.objects.get()
    assert (entry.operation, entry.outcome, entry.username) == (
        Operation.VAULT_DELETE,
        Outcome.REFUSED,
        "bob",
    )
    assert "Contributor" in entry.reason


def test_an_unknown_operation_is_a_programming_error(vault):
    with pytest.raises(ValueError):
        activity.record(operation="vault.explode", vault=vault)


def test_entries_cannot_be_changed_or_deleted_through_the_orm(alice, vault):
    entry = activity.record(operation=Operation.VAULT_CREATE, user=alice, vault=vault)
    entry.reason = "rewritten"
    with pytest.raises(ActivityEntry.AppendOnly):
        entry.save()
    with pytest.raises(ActivityEntry.AppendOnly):
        entry.delete()
    with pytest.raises(ActivityEntry.AppendOnly):
        ActivityEntry.objects.filter(pk=entry.pk).update(reason="rewritten")
    with pytest.raises(ActivityEntry.AppendOnly):
        ActivityEntry.objects.all().delete()
    assert ActivityEntry.objects.get(pk=entry.pk).reason == ""


def test_deleting_the_user_keeps_the_entry_with_the_name(bob, vault):
    activity.record(operation=Operation.CREDENTIALS_DOWNLOAD, user=bob, vault=vault)
    bob.delete()
    entry = ActivityEntry.objects.get()
    assert (entry.user_id, entry.username) == (None, "bob")


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the database-level guard is a PostgreSQL trigger",
)
def test_postgresql_refuses_update_and_delete_in_sql(alice, vault):
    entry = activity.record(operation=Operation.VAULT_CREATE, user=alice, vault=vault)
    table = ActivityEntry._meta.db_table
    for sql in (
        f"UPDATE {table} SET outcome = 'failed' WHERE id = %s",
        f"UPDATE {table} SET user_id = NULL, reason = 'x' WHERE id = %s",
        f"DELETE FROM {table} WHERE id = %s",
    ):
        with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [entry.pk])
    assert ActivityEntry.objects.get(pk=entry.pk).outcome == Outcome.SUCCEEDED
