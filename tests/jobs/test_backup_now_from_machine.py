"""Back up now asked for on the machine (``haven-agent backup``): ``POST
/api/agent/jobs/backup/``. The portal's rules and words, the machine's own token only."""

from __future__ import annotations

import json
from datetime import date

import pytest

from agents import api_auth
from agents import services as agent_services
from agents.runtime import protocol
from jobs import selectors, services
from jobs.models import Job
from tests.jobs.conftest import make_machine, spec, token_for
from vaults.activity import Operation
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db


def ask(client, token, body=None):
    return client.post(
        "/api/agent/jobs/backup/",
        data=json.dumps(body or {}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def test_a_machine_starts_a_backup_of_itself_that_the_portal_shows_and_logs(
    client, machine, policy, sent, alice
):
    answer = ask(client, token_for(machine), {"retain_until": "2099-12-31"})
    assert answer.status_code == 201, answer.content
    body = answer.json()
    job = Job.objects.get(pk=body["id"])
    assert body["path"] == f"/jobs/{job.pk}/" and body["status"] == Job.Status.QUEUED
    assert job.machine == machine and job.operation == Job.Operation.BACKUP
    assert job.trigger == Job.Trigger.ADHOC and job.started_on_machine
    assert job.created_by is None and job.retain_until == date(2099, 12, 31)
    # Dispatched as any other backup.
    assert sent[-1] == (str(machine.pk), protocol.BACKUP_TASK, {"job_id": str(job.pk)})
    entry = ActivityEntry.objects.get(operation=Operation.BACKUP_NOW)
    assert entry.username == f"machine {machine.name}" and entry.user is None
    assert entry.detail["job"] == str(job.pk) and entry.detail["started_on_machine"] is True
    # The job's page says where it was started.
    client.force_login(alice)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Started on the machine" in page


def test_the_machine_follows_its_job_through_the_job_endpoint(client, machine, policy):
    token = token_for(machine)
    job_id = ask(client, token).json()["id"]
    job = Job.objects.get(pk=job_id)
    services.job_mark_started(job=job)
    services.job_record_progress(
        job=job, event={"phase": "backing_up", "bytes_done": 10, "bytes_total": 40}
    )
    body = client.get(f"/api/agent/jobs/{job_id}/", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert body["status"] == "running" and body["started_at"]
    assert body["progress"]["bytes_done"] == 10 and body["progress"]["bytes_total"] == 40
    services.job_fail(job=job, reason="the disk went away")
    body = client.get(f"/api/agent/jobs/{job_id}/", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert body["status"] == "failed" and body["error"] == "the disk went away"


def test_without_a_policy_it_is_refused_with_the_portals_words(client, machine, sent):
    answer = ask(client, token_for(machine))
    assert answer.status_code == 409 and answer.json()["error"] == "no_policy"
    assert answer.json()["message"] == str(services.NoPolicy(machine))
    assert not Job.objects.exists() and sent == []


def test_a_stopped_machine_is_refused(client, machine, policy, alice):
    services.protection_stop(machine=machine, user=alice, retention="forever")
    answer = ask(client, token_for(machine))
    assert answer.status_code == 409 and answer.json()["error"] == "protection_stopped"
    assert answer.json()["message"] == selectors.stopped_reason(machine)
    assert not Job.objects.filter(operation=Job.Operation.BACKUP).exists()


def test_a_pending_seed_is_refused(client, machine, alice):
    services.policy_save(machine=machine, spec=spec(initial_backup="offline"), user=alice)
    answer = ask(client, token_for(machine))
    assert answer.status_code == 409 and answer.json()["error"] == "seed_pending"
    assert answer.json()["message"] == services.SeedPending.MESSAGE


def test_one_backup_at_a_time(client, machine, policy):
    running = services.backup_start(machine=machine)
    answer = ask(client, token_for(machine))
    assert answer.status_code == 409 and answer.json()["error"] == "backup_running"
    assert answer.json()["job_id"] == str(running.pk)
    assert answer.json()["message"] == f"A backup of {machine} is already running."
    assert Job.objects.count() == 1


@pytest.mark.parametrize(
    ("value", "words"),
    [("2000-01-01", "Choose today or a later date."), ("next week", "like 2030-12-31")],
)
def test_a_bad_retain_until_is_a_400_naming_the_field(client, machine, policy, value, words):
    answer = ask(client, token_for(machine), {"retain_until": value})
    assert answer.status_code == 400
    assert (
        answer.json()["message"].startswith("retain_until: ") and words in answer.json()["message"]
    )
    assert not Job.objects.exists()


def test_a_machine_cannot_start_a_backup_of_another_machine(client, machine, vault, policy, alice):
    other = make_machine(vault, "db-01")
    services.policy_save(machine=other, spec=spec(), user=alice)
    token = token_for(machine)
    for body in (
        {"machine_id": str(other.pk)},
        {"vault_id": "00000000-0000-0000-0000-0000000000aa"},
    ):
        answer = ask(client, token, body)
        assert answer.status_code == 404, body
    assert not Job.objects.exists()
    # Its own token starts its own backup, whatever else the body says.
    assert ask(client, token, {"machine_id": str(machine.pk)}).status_code == 201
    assert not Job.objects.filter(machine=other).exists()


def test_no_token_or_an_unregistered_machines_token_gets_401(client, machine, policy):
    token = token_for(machine)
    assert ask(client, "not-a-token").status_code == 401
    agent_services.machine_unregister(machine=machine)
    assert ask(client, token).status_code == 401
    assert not Job.objects.exists()


def test_it_is_rate_limited_like_every_agent_endpoint(client, machine, policy, monkeypatch):
    monkeypatch.setattr(api_auth, "RATE_LIMIT_PER_MINUTE", 1)
    token = token_for(machine)
    assert ask(client, token).status_code == 201
    assert ask(client, token).status_code == 429
