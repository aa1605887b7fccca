"""The agent's Recover Data endpoints: the read-only grant for a sibling machine, downloads."""

from __future__ import annotations

import io
import json

import pytest
from django.urls import reverse

from jobs.models import Job
from jobs.recovery import services
from tests.recovery.conftest import make_machine, make_vault
from vaults import storage

pytestmark = pytest.mark.django_db


def test_a_machine_gets_a_read_only_grant_for_a_sibling_a_person_asked_about(
    client, alice, web01, web02, token_for, sent
):
    services.question_ask(user=alice, source=web01, target=web02, kind="points")
    response = client.post(
        reverse("recovery_api:grant"),
        json.dumps({"source_machine": "WEB-01"}),
        content_type="application/json",
        **token_for(web02),
    )
    assert response.status_code == 200
    data = response.json()
    assert (data["machine"]["id"], data["machine"]["name"]) == (str(web01.pk), "web-01")
    assert data["machine"]["unregistered_at"] is None and data["other_machines"] == []
    assert data["grant"]["container"] == web01.container
    assert data["grant"]["permissions"] == "rl"


def test_a_machine_reads_its_own_backups_without_anyones_say_so(client, web01, token_for):
    response = client.post(
        reverse("recovery_api:grant"),
        json.dumps({"source_machine": "web-01"}),
        content_type="application/json",
        **token_for(web01),
    )
    assert response.status_code == 200
    assert response.json()["grant"]["container"] == web01.container


def test_no_grant_for_a_machine_of_another_vault(client, subscription, web02, token_for):
    far = make_machine(make_vault(subscription, "vault-two"), "far-01")
    for ref in (str(far.pk), "far-01", "not-a-machine"):
        response = client.post(
            reverse("recovery_api:grant"),
            json.dumps({"source_machine": ref}),
            content_type="application/json",
            **token_for(web02),
        )
        assert response.status_code == 404


def test_a_download_is_an_audited_job_and_served_to_its_requester(
    client, alice, member, web02, download_job, sent, token_for, caplog
):
    job = download_job
    assert job.details["kind"] == "download" and job.machine == web02
    assert sent[0][1] == "haven.agent.recovery.download"
    assert sent[0][2]["paths"] == ["/home/a.txt"]
    assert (
        "Preparing the archive"
        in client.get(reverse("recovery:download_status", args=[job.pk])).content.decode()
    )
    archive = b"\x1f\x8b" + b"x" * 1000
    response = client.generic(
        "POST", reverse("recovery_api:download", args=[job.pk]), archive,
        content_type="application/gzip", **token_for(web02),
    )  # fmt: skip
    assert response.status_code == 200 and response.json()["bytes"] == 1002
    Job.objects.filter(pk=job.pk).update(status=Job.Status.COMPLETED)
    page = client.get(reverse("recovery:download_status", args=[job.pk])).content.decode()
    assert "Download archive" in page
    with caplog.at_level("INFO", logger="haven.audit"):
        got = client.get(reverse("recovery:download_file", args=[job.pk]))
        assert b"".join(got.streaming_content) == archive
    assert "download served: user alice" in caplog.text
    client.force_login(member("owner"))  # even an owner: only the requester downloads
    assert client.get(reverse("recovery:download_file", args=[job.pk])).status_code == 404


def test_a_download_archive_from_another_machine_or_too_big_is_refused(
    client, web01, web02, download_job, token_for, monkeypatch
):
    url = reverse("recovery_api:download", args=[download_job.pk])
    wrong = client.generic(
        "POST", url, b"x" * 10, content_type="application/gzip", **token_for(web01)
    )
    assert wrong.status_code == 404
    monkeypatch.setattr(services, "DOWNLOAD_MAX_BYTES", 5)
    big = client.generic(
        "POST", url, b"x" * 10, content_type="application/gzip", **token_for(web02)
    )
    assert big.status_code == 409 and "larger" in big.json()["message"]
    assert list(storage.downloads_store().list()) == []
    assert io  # keep the import for readers comparing with the agent side
