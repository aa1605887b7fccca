"""Recover Data in the activity log: a restore and a download started in the portal, a
Reader's refused attempt, and another machine's backups read from a command line."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from jobs.models import Job
from portal.models import Role
from tests.agents.conftest import issue_credentials
from tests.support.activity import one_entry
from vaults.activity import Operation, Outcome
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db


def test_restore_and_download_started_are_recorded(client, alice, web01, web02, points, sent):
    client.force_login(alice)
    point = points[-1]
    client.post(
        reverse("recovery:restore", args=[web01.pk, web02.pk]),
        {"rp": point.snapshot_id, "paths": ["/etc/hosts"], "location": "original"},
        REMOTE_ADDR="192.0.2.7",
    )
    client.post(
        reverse("recovery:download", args=[web01.pk, web01.pk]),
        {"rp": point.snapshot_id, "paths": ["/etc/hosts"]},
    )
    restore = one_entry(
        operation=Operation.RESTORE_START,
        username="alice",
        address="192.0.2.7",
        resource_name="web-01",
        outcome=Outcome.SUCCEEDED,
    )
    assert restore.detail["target"] == "web-02"
    assert restore.detail["recovery_point"] == point.snapshot_id
    download = one_entry(operation=Operation.DOWNLOAD_START, username="alice")
    assert download.detail["job"] == str(Job.objects.get(details__kind="download").pk)


def test_a_readers_restore_is_refused_and_recorded(client, member, web01, points, sent):
    client.force_login(member(Role.READER))
    response = client.post(
        reverse("recovery:restore", args=[web01.pk, web01.pk]),
        {"rp": points[0].snapshot_id, "paths": ["/etc/hosts"]},
    )
    assert response.status_code == 403
    assert not Job.objects.exists()
    one_entry(operation=Operation.RESTORE_START, outcome=Outcome.REFUSED, username="bob")


def test_reading_a_siblings_backups_from_the_command_line_is_recorded(
    client, settings, alice, web01, web02, token_for
):
    settings.HAVEN_PUBLIC_URL = "https://haven.example.test"
    refused = client.post(
        reverse("recovery_api:grant"),
        json.dumps({"source_machine": "web-01"}),
        content_type="application/json",
        **token_for(web02),
    )
    assert refused.status_code == 403
    content = issue_credentials(web02.vault, alice).decode()
    granted = client.post(
        reverse("recovery_api:grant"),
        json.dumps({"source_machine": "web-01", "vault_credentials": content}),
        content_type="application/json",
        **token_for(web02),
    )
    assert granted.status_code == 200
    entries = list(ActivityEntry.objects.filter(operation=Operation.RESTORE_START))
    assert [(e.outcome, e.username, e.resource_name) for e in entries] == [
        (Outcome.SUCCEEDED, "alice", "web-01"),
        (Outcome.REFUSED, "machine web-02", "web-01"),
    ]
    assert entries[0].detail["via"] == "command line"
