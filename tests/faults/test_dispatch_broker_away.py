"""The portal cannot reach the message broker when a person starts a job: Back up now and a
restore answer as usual (no 500), the job's page says it waits for the broker, and once
the broker is reachable again the portal worker's outbox pass sends the message and a real
agent runs the job. Nothing the person started is lost.

The broker "goes away" through a loopback FaultProxy between the portal (this process,
where the test's requests dispatch) and the shared Redis; the agent keeps its own direct
connection, as a machine elsewhere would."""

from __future__ import annotations

import random
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.faults._agents import (  # noqa: F401 - fixtures
    agent_portal,
    machines,
    portal_broker_at,
    repo_agent,
    vault_owner,
    wait_for_job,
)
from tests.support.faultproxy import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(autouse=True)
def _fresh_fast_path(monkeypatch):
    """No refusal seen by an earlier test holds this one's messages back."""
    from agents import dispatch

    monkeypatch.setattr(dispatch, "_refused", {"until": 0.0, "error": ""})


@pytest.fixture
def cut_broker(agent_portal, settings, monkeypatch, redis_url):  # noqa: F811
    """A FaultProxy in front of Redis, as this process's broker."""
    target = urlsplit(redis_url)
    with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        url = redis_url.replace(f":{target.port}", f":{proxy.port}", 1)
        with portal_broker_at(settings, monkeypatch, url):
            yield proxy


def seed(folder, *, files: int = 12, seed: int = 13) -> dict[str, bytes]:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    contents = {f"file-{i:02}.bin": rng.randbytes(40_000 + i) for i in range(files)}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return contents


def send_outbox_now() -> dict:
    """The portal worker's pass (agents.outbox_send), as if its pause had run out."""
    from agents import dispatch

    return dispatch.outbox_send(now=timezone.now() + timedelta(minutes=2))


def test_back_up_now_and_a_restore_while_the_broker_is_unreachable_run_when_it_is_back(
    vault_owner,  # noqa: F811
    machines,  # noqa: F811
    cut_broker,
    tmp_path,
):
    from agents.models import AgentMessage
    from jobs import policy_rules, services
    from jobs.models import Job, RecoveryPoint

    agent = machines.register("web-01", vault_owner.credentials)
    data = seed(agent.home / "data")
    machine = agent.model
    spec = {**policy_rules.default_spec(), "items": [str(agent.home / "data")]}
    services.policy_save(machine=machine, spec=spec, user=vault_owner.user)
    client = Client()
    client.force_login(vault_owner.user)

    cut_broker.cut()
    answer = client.post(reverse("jobs:backup_now", args=[machine.pk]))

    assert answer.status_code == 302, answer.content[:500]
    backup = Job.objects.get(machine=machine, operation=Job.Operation.BACKUP)
    page = client.get(reverse("jobs:detail", args=[backup.pk])).content.decode()
    assert "Waiting for the message broker (since" in page
    message = AgentMessage.objects.get(job_id=backup.pk)
    assert message.sent_at is None and message.attempts == 1 and message.last_error
    assert send_outbox_now()["sent"] == 0  # still away: kept, tried again later

    cut_broker.restore()
    assert send_outbox_now()["sent"] == 1

    backup = wait_for_job(backup, agent)
    assert backup.status == Job.Status.COMPLETED, backup.error + agent.stderr_text()
    point = RecoveryPoint.objects.get(job=backup)
    assert point.file_count == len(data)

    # A restore started while the broker is away again: no 500 after its commit.
    target = tmp_path / "restored"
    cut_broker.cut()
    answer = client.post(
        reverse("recovery:restore", args=[machine.pk, machine.pk]),
        {
            "rp": point.snapshot_id,
            "paths": [str(agent.home / "data")],
            "location": "another",
            "folder": str(target),
        },
    )
    assert answer.status_code == 302, answer.content[:500]
    restore = Job.objects.get(machine=machine, operation=Job.Operation.RESTORE)
    assert answer["Location"] == reverse("jobs:detail", args=[restore.pk])
    page = client.get(answer["Location"]).content.decode()
    assert "Waiting for the message broker (since" in page

    cut_broker.restore()
    assert send_outbox_now()["sent"] == 1
    restore = wait_for_job(restore, agent)
    assert restore.status == Job.Status.COMPLETED, restore.error + agent.stderr_text()
    restored = {p.name: p.read_bytes() for p in target.rglob("*.bin")}
    assert restored == data


def test_a_question_while_the_broker_is_unreachable_says_so_at_once(
    vault_owner,  # noqa: F811
    machines,  # noqa: F811
    cut_broker,
):
    agent = machines.register("web-01", vault_owner.credentials)
    client = Client()
    client.force_login(vault_owner.user)
    cut_broker.cut()

    answer = client.post(
        reverse("recovery:ask", args=[agent.machine_id, agent.machine_id, "points"]),
        HTTP_HX_REQUEST="true",
    )

    assert answer.status_code == 200
    text = answer.content.decode()
    assert "could not reach the message broker" in text and "Try again in a minute" in text
