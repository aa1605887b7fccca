"""A machine's data outlives its registration (issue 14, item 1): an unregistered or
replaced machine stays a *source* of Recover Data — in the portal's wizard and for the
command line of any registered machine of the vault — but never a *target*; the
authorisation rules of issue 12 item 3 hold for it as for any other source."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.api_auth import machine_token_issue
from agents.models import Machine, SourceGrantAuthorisation
from jobs.models import RecoveryPoint
from jobs.recovery import services
from portal.models import Role
from tests.recovery.conftest import make_machine
from vaults import credentials as vc

pytestmark = pytest.mark.django_db


def point_of(machine, snapshot: str, days_ago: int = 1) -> RecoveryPoint:
    at = timezone.now().replace(microsecond=0) - timedelta(days=days_ago)
    return RecoveryPoint.objects.create(
        machine=machine, vault=machine.vault, snapshot_id=snapshot * 32,
        manifest_blob=f"snapshots/{snapshot * 32}", created_at=at, tagged_for=at,
        kind=RecoveryPoint.Kind.ADHOC, logical_bytes=1000, file_count=3,
    )  # fmt: skip


def gone(machine, *, replaced_by=None, days_ago: int = 0) -> Machine:
    Machine.objects.filter(pk=machine.pk).update(
        unregistered_at=timezone.now() - timedelta(days=days_ago), replaced_by=replaced_by
    )
    machine.refresh_from_db()
    return machine


@pytest.fixture
def dead(vault):
    """db-01 backed up, then was unregistered."""
    machine = make_machine(vault, "db-01")
    point_of(machine, "d")
    return gone(machine, days_ago=2)


@pytest.fixture
def replaced(vault):
    """web-01 backed up, then web-01 registered again with --replace (no backup yet)."""
    old = make_machine(vault, "web-01")
    point_of(old, "a")
    Machine.objects.filter(pk=old.pk).update(unregistered_at=timezone.now())
    new = make_machine(vault, "web-01")
    return gone(old, replaced_by=new), new


def ask_grant(client, machine, body: dict):
    return client.post(
        reverse("recovery_api:grant"),
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {machine_token_issue(machine=machine)}",
    )


def test_the_source_list_shows_gone_machines_marked_so_and_only_registered_targets(
    client, alice, vault, dead, replaced, web02
):
    old, new = replaced
    silent = gone(make_machine(vault, "never-backed-up"))  # nothing to recover: not listed
    client.force_login(alice)
    page = client.get(reverse("recovery:start") + f"?vault={vault.pk}").content.decode()
    day = f"{timezone.now():%Y-%m-%d}"
    assert f"Replaced by web-01 on {day}" in page
    assert f"Unregistered on {dead.unregistered_at:%Y-%m-%d}" in page
    assert str(dead.pk) in page and str(old.pk) in page and str(silent.pk) not in page
    latest = RecoveryPoint.objects.get(machine=dead).created_at
    assert f"latest recovery point {latest:%Y-%m-%d %H:%M} UTC" in page
    # registered first (by name), then the gone ones, most recently gone first
    order = [str(m.pk) for m in services.sources_for_user(alice)]
    assert order == [str(new.pk), str(web02.pk), str(old.pk), str(dead.pk)]

    second = client.get(reverse("recovery:start") + f"?source={dead.pk}").content.decode()
    assert f"Unregistered on {dead.unregistered_at:%Y-%m-%d}" in second
    assert f'value="{dead.pk}" checked' not in second  # itself is no target
    assert "Another machine: web-02" in second and "Another machine: web-01" in second
    assert f"recovery-passphrase --from-machine-id {dead.pk}" in second


def test_a_gone_machine_is_browsed_in_the_wizard_and_restored_onto_a_registered_one(
    client, alice, dead, web02, sent
):
    client.force_login(alice)
    wizard = client.get(reverse("recovery:wizard", args=[dead.pk, web02.pk]))
    assert wizard.status_code == 200
    page = wizard.content.decode()
    assert "Unregistered on" in page and 'value="' + "d" * 32 + '"' in page
    # db-01's name means db-01 on web-02: the command shown uses the name
    assert "recovery-passphrase --from-machine 'db-01'" in page

    asked = client.post(
        reverse("recovery:ask", args=[dead.pk, web02.pk, "browse"]), {"rp": "d" * 32}
    )
    assert asked.status_code == 200 and sent[-1][0] == "web-02"
    assert sent[-1][2]["source_machine_id"] == str(dead.pk)
    response = client.post(
        reverse("recovery:restore", args=[dead.pk, web02.pk]),
        {"rp": "d" * 32, "paths": ["/srv/db"], "location": "another", "folder": "/restored"},
    )
    assert response.status_code == 302 and sent[-1][1] == "haven.agent.recovery.restore"
    assert sent[-1][2]["source_machine_id"] == str(dead.pk)
    row = SourceGrantAuthorisation.objects.filter(job_id__isnull=False).get()
    assert (row.source, row.target, row.authorised_by) == (dead, web02, alice)


def test_a_gone_machine_is_never_a_target(client, alice, dead, web02, sent):
    client.force_login(alice)
    for source, target in ((web02, dead), (dead, dead)):
        response = client.get(reverse("recovery:wizard", args=[source.pk, target.pk]))
        assert response.status_code == 403
        assert "no longer registered" in response.content.decode()
        restore = client.post(
            reverse("recovery:restore", args=[source.pk, target.pk]),
            {"rp": "d" * 32, "paths": ["/srv/db"]},
        )
        assert restore.status_code == 403
    assert sent == []


def test_a_reader_cannot_and_an_outsider_does_not_see_a_gone_machine(
    client, member, charlie, dead, web02, sent
):
    client.force_login(member(Role.READER))
    assert client.get(reverse("recovery:wizard", args=[dead.pk, web02.pk])).status_code == 403
    assert str(dead.pk) not in client.get(reverse("recovery:start")).content.decode()
    client.force_login(charlie)
    assert client.get(reverse("recovery:wizard", args=[dead.pk, web02.pk])).status_code == 404
    assert client.get(reverse("recovery:start") + f"?source={dead.pk}").status_code == 404
    assert sent == [] and not SourceGrantAuthorisation.objects.exists()


def test_a_gone_machines_backups_need_a_persons_say_so_like_any_other(
    client, vault, member, dead, web02
):
    # On its own, web-02 gets nothing; with fresh credentials of a Backup Operator it may
    # read db-01's container (read and list only), for one command's hour.
    refused = ask_grant(client, web02, {"source_machine": "db-01"})
    assert refused.status_code == 403 and "grant" not in refused.json()
    _name, content, _ = vc.credentials_issue(vault=vault, issued_by=member(Role.BACKUP_OPERATOR))
    ok = ask_grant(
        client, web02, {"source_machine": "db-01", "vault_credentials": content.decode()}
    )
    assert ok.status_code == 200
    body = ok.json()
    assert body["grant"]["container"] == dead.container and body["grant"]["permissions"] == "rl"
    assert body["machine"]["id"] == str(dead.pk)
    assert body["machine"]["state"].startswith("Unregistered on")
    assert body["machine"]["latest_point"] is not None


def test_a_name_means_its_holder_now_else_its_last_holder_and_lists_the_others(
    client, vault, alice, replaced, web02, caplog
):
    old, new = replaced
    older = make_machine(vault, "web-01x")  # an earlier web-01, gone long ago
    Machine.objects.filter(pk=older.pk).update(
        name="web-01", unregistered_at=timezone.now() - timedelta(days=90)
    )
    point_of(older, "c", days_ago=95)
    content = vc.credentials_issue(vault=vault, issued_by=alice)[1].decode()

    # From web-02, "web-01" is the machine that has the name now; the two earlier ones are
    # listed with their state and latest point, to be picked by id.
    body = ask_grant(client, web02, {"source_machine": "web-01", "vault_credentials": content})
    body = body.json()
    assert body["machine"]["id"] == str(new.pk) and body["machine"]["state"] == "Registered"
    assert [m["id"] for m in body["other_machines"]] == [str(old.pk), str(older.pk)]
    assert body["other_machines"][0]["state"].startswith("Replaced by web-01 on")
    by_id = ask_grant(
        client, web02, {"source_machine_id": str(older.pk), "vault_credentials": content}
    )
    assert by_id.json()["machine"]["id"] == str(older.pk) and by_id.json()["other_machines"] == []

    # On the replacement itself, "web-01" means the machine it replaced, not itself.
    body = ask_grant(client, new, {"source_machine": "WEB-01", "vault_credentials": content})
    assert body.status_code == 200
    assert body.json()["machine"]["id"] == str(old.pk)
    assert body.json()["grant"]["container"] == old.container
    assert [m["id"] for m in body.json()["other_machines"]] == [str(older.pk)]
    assert services.cli_source_option(source=old, target=new) == ("--from-machine", "web-01")
    assert services.cli_source_option(source=old, target=web02) == (
        "--from-machine-id",
        str(old.pk),
    )


@pytest.mark.parametrize(
    "body",
    [
        {"source_machine_id": "not-a-uuid"},
        {"source_machine_id": "00000000-0000-0000-0000-000000000000"},
        {"source_machine": "web-01", "source_machine_id": "x"},
        {"source_machine_id": 7},
        {},
    ],
)
def test_bad_or_unknown_source_ids_are_a_clear_4xx(client, web02, body):
    response = ask_grant(client, web02, body)
    assert response.status_code in (400, 404)
    assert response.json()["message"]
