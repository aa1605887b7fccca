"""Sending a task to an agent (``agents.dispatch``): signed, written to the outbox with the
caller's work, delivered after commit, and — when the broker does not take it — kept and
sent by the portal worker's outbox pass until it does or the message expires.

These run on the portal's own broker (the embedded filesystem transport here; Redis in the
fault tests, tests/faults/test_dispatch_*.py) and read the machine's queue back from it."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from agents import dispatch
from agents.models import AgentMessage
from agents.runtime import protocol
from agents.runtime.tasksig import AUTH_KWARG
from jobs.models import Job
from tests.support import builders

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_fast_path(monkeypatch):
    """No refusal seen by an earlier test holds this one's messages back."""
    from agents import dispatch

    monkeypatch.setattr(dispatch, "_refused", {"until": 0.0, "error": ""})


@pytest.fixture
def machine(vault):
    return builders.make_machine(vault=vault, name="web-01", last_seen_at=timezone.now())


def queued(queue: str, *, wait: float = 2.0) -> list[tuple[str, str, dict]]:
    """(task name, task id, kwargs) of every message now on ``queue``, taken off it."""
    from portal.celery import app

    found = []
    deadline = time.monotonic() + wait
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        while True:
            message = channel.basic_get(queue, no_ack=True)
            if message is None:
                if found or time.monotonic() > deadline:
                    return found
                time.sleep(0.05)
                continue
            headers = message.headers
            _args, kwargs, _embed = message.decode()
            found.append((headers["task"], headers["id"], kwargs))


@contextmanager
def broker_folder_broken():
    """The embedded broker's queue folder replaced by a file: every send fails (as root,
    a read-only folder would still be written)."""
    folder = Path(django_settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_out"])
    aside = folder.with_name(folder.name + ".aside")
    folder.rename(aside)
    folder.write_text("not a folder")
    try:
        yield
    finally:
        folder.unlink()
        aside.rename(folder)


@pytest.fixture
def broken_broker(settings, monkeypatch):
    """``with broken_broker():`` the portal's broker refuses every message: the embedded
    one's folder unwritable, or Redis (the servers pass) behind a cut FaultProxy."""
    url = django_settings.CELERY_BROKER_URL
    if not url.startswith("redis"):
        return broker_folder_broken

    @contextmanager
    def cut():
        from tests.faults._agents import portal_broker_at
        from tests.support.faultproxy import FaultProxy

        target = urlsplit(url)
        with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
            via = url.replace(f":{target.port}", f":{proxy.port}", 1)
            with portal_broker_at(settings, monkeypatch, via):
                proxy.cut()
                yield

    return cut


def test_the_signed_message_goes_to_the_machines_queue_after_commit(
    machine, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        task_id = dispatch.send_after_commit(machine, protocol.PING_TASK, note="hello")
        row = AgentMessage.objects.get(task_id=task_id)
        assert row.sent_at is None  # not before the row the agent will look for is committed
    [(name, sent_id, kwargs)] = queued(machine.queue)
    assert (name, sent_id) == (protocol.PING_TASK, task_id)
    assert kwargs["note"] == "hello" and kwargs[AUTH_KWARG]["signature"]
    row.refresh_from_db()
    assert row.sent_at is not None and row.attempts == 1 and row.kwargs == kwargs


def test_a_rolled_back_caller_leaves_no_message(machine, django_capture_on_commit_callbacks):
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        dispatch.send_after_commit(machine, protocol.PING_TASK, note="never")
        raise RuntimeError("the caller failed")
    assert not AgentMessage.objects.exists()
    assert queued(machine.queue, wait=0.3) == []


def test_nothing_is_sent_to_an_unregistered_machine(
    machine, caplog, django_capture_on_commit_callbacks
):
    machine.unregistered_at = timezone.now()
    with caplog.at_level(logging.WARNING), django_capture_on_commit_callbacks(execute=True):
        assert dispatch.send_after_commit(machine, protocol.CANCEL_TASK, job_id="j") is None
    assert not AgentMessage.objects.exists()
    assert "the machine is unregistered" in caplog.text


def test_a_send_failure_on_the_embedded_broker_is_kept_and_sent_by_the_outbox_pass(
    broken_broker, machine, caplog, django_capture_on_commit_callbacks
):
    with broken_broker():
        with caplog.at_level(logging.WARNING), django_capture_on_commit_callbacks(execute=True):
            first = dispatch.send_after_commit(machine, protocol.PING_TASK, note="one")
            second = dispatch.send_after_commit(machine, protocol.PING_TASK, note="two")
        rows = list(AgentMessage.objects.order_by("id"))
        assert [r.sent_at for r in rows] == [None, None]
        assert rows[0].attempts == 1 and rows[0].last_error
        # The second waits behind the first: a machine's messages go in order.
        assert rows[1].attempts == 0 and rows[1].last_error.startswith("behind an earlier")
        assert f"could not send {protocol.PING_TASK} [{first}]" in caplog.text
        # A pass while the folder is still broken tries again, and keeps them.
        counts = dispatch.outbox_send(now=timezone.now() + timedelta(minutes=1))
        assert counts["failed"] == 1 and counts["sent"] == 0
    assert AgentMessage.objects.get(task_id=first).attempts == 2

    counts = dispatch.outbox_send(now=timezone.now() + timedelta(minutes=3))

    assert counts["sent"] == 2
    assert [(t, kw["note"]) for _, t, kw in queued(machine.queue)] == [
        (first, "one"),
        (second, "two"),
    ]
    assert not AgentMessage.objects.filter(sent_at__isnull=True).exists()


def test_after_a_refusal_new_messages_go_straight_to_the_outbox_for_a_few_seconds(
    broken_broker, vault, machine, django_capture_on_commit_callbacks
):
    """A scheduler tick starting many backups while the broker is away does not wait for
    the broker once per machine."""
    other = builders.make_machine(vault=vault, name="web-02")
    with broken_broker(), django_capture_on_commit_callbacks(execute=True):
        first = dispatch.send_after_commit(machine, protocol.PING_TASK)
        second = dispatch.send_after_commit(other, protocol.PING_TASK)
    assert AgentMessage.objects.get(task_id=first).attempts == 1
    held = AgentMessage.objects.get(task_id=second)
    assert held.attempts == 0 and held.last_error.startswith("not tried: the broker refused")
    assert dispatch.outbox_send(now=timezone.now() + timedelta(minutes=1))["sent"] == 2
    assert [t for _, t, _ in queued(other.queue)] == [second]


def test_a_refused_message_is_not_tried_again_before_its_pause(
    broken_broker, machine, django_capture_on_commit_callbacks
):
    with broken_broker():
        with django_capture_on_commit_callbacks(execute=True):
            task_id = dispatch.send_after_commit(machine, protocol.PING_TASK)
        row = AgentMessage.objects.get(task_id=task_id)
        assert row.next_attempt_at - row.last_attempt_at == dispatch.backoff(1)
        assert dispatch.outbox_send(now=row.last_attempt_at + timedelta(seconds=1))["failed"] == 0
        assert AgentMessage.objects.get(task_id=task_id).attempts == 1


def test_a_job_whose_message_never_left_says_waiting_for_the_broker_then_runs_when_sent(
    broken_broker, client, alice, machine, django_capture_on_commit_callbacks
):
    from jobs import policy_rules
    from jobs.services import policy_save

    with django_capture_on_commit_callbacks(execute=True):
        policy_save(machine=machine, spec={**policy_rules.default_spec(), "items": ["/srv"]})
    queued(machine.queue)  # the policy's message went
    client.force_login(alice)
    with broken_broker():
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(reverse("jobs:backup_now", args=[machine.pk]))
        assert response.status_code == 302
        job = Job.objects.get(machine=machine)
        page = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
        assert "Waiting for the message broker (since" in page
        assert "1 attempt:" in page
        listing = client.get(reverse("jobs:list")).content.decode()
        assert "waiting for the message broker since" in listing
    dispatch.outbox_send(now=timezone.now() + timedelta(minutes=1))
    page = client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "Waiting for the message broker" not in page
    [(name, _, kwargs)] = queued(machine.queue)
    assert name == protocol.BACKUP_TASK and kwargs["job_id"] == str(job.pk)


def test_a_message_that_expires_unsent_fails_its_job_saying_the_broker_was_away(
    broken_broker, machine, django_capture_on_commit_callbacks
):
    from jobs.services import backup_start

    with broken_broker():
        with django_capture_on_commit_callbacks(execute=True):
            job = backup_start(machine=machine)
        row = AgentMessage.objects.get(job_id=job.pk)
        later = row.expires_at + timedelta(seconds=1)
        counts = dispatch.outbox_send(now=later)
    assert counts["abandoned"] == 1
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "The portal could not reach the message broker for" in job.error
    assert "start the backup again" in job.error
    row.refresh_from_db()
    assert row.abandoned_at is not None and row.sent_at is None
    # Given up means given up: a later pass does not send it.
    dispatch.outbox_send(now=later + timedelta(minutes=1))
    assert queued(machine.queue, wait=0.3) == []


def test_the_sweep_fails_a_job_whose_message_never_left_with_the_brokers_words(
    broken_broker, machine, settings, django_capture_on_commit_callbacks
):
    from jobs.services import backup_start, jobs_sweep

    machine.last_seen_at = None
    machine.save(update_fields=["last_seen_at"])
    with broken_broker(), django_capture_on_commit_callbacks(execute=True):
        job = backup_start(machine=machine)
    assert job.status == Job.Status.WAITING
    jobs_sweep(now=timezone.now() + timedelta(minutes=settings.HAVEN_JOB_AGENT_WAIT_MINUTES + 1))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "could not reach the message broker" in job.error
    assert "did not pick up this job" not in job.error


def test_messages_to_a_machine_unregistered_since_are_given_up(
    broken_broker, machine, django_capture_on_commit_callbacks
):
    with broken_broker(), django_capture_on_commit_callbacks(execute=True):
        task_id = dispatch.send_after_commit(machine, protocol.PING_TASK)
    machine.unregistered_at = timezone.now()
    machine.save(update_fields=["unregistered_at"])
    assert dispatch.outbox_send(now=timezone.now() + timedelta(minutes=1))["sent"] == 0
    row = AgentMessage.objects.get(task_id=task_id)
    assert row.abandoned_at is not None and row.last_error == "the machine was unregistered"
    assert queued(machine.queue, wait=0.3) == []


def test_old_sent_messages_are_forgotten(machine, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        dispatch.send_after_commit(machine, protocol.PING_TASK)
    queued(machine.queue)
    assert dispatch.outbox_send(now=timezone.now() + dispatch.KEEP * 2)["purged"] == 1
    assert not AgentMessage.objects.exists()


def test_the_outbox_runs_every_few_seconds_on_the_portal_queue():
    from portal.celery import app

    entry = app.conf.beat_schedule["agents.outbox_send"]
    assert entry["task"] == "agents.outbox_send" and entry["schedule"] <= 15
    assert entry["options"]["queue"] == "portal"


def test_a_question_the_broker_refuses_is_said_at_once(broken_broker, machine):
    with broken_broker(), pytest.raises(dispatch.BrokerUnreachable):
        dispatch.ask_now(machine, protocol.BROWSE_TASK, request_id="r", path="/")
    assert not AgentMessage.objects.exists()  # questions never wait in the outbox


def test_a_message_expires_when_its_job_would_fail_for_waiting_and_a_policy_lasts(
    machine, settings
):
    from datetime import datetime

    from agents.runtime.tasksig import MAX_AGE

    settings.HAVEN_JOB_AGENT_WAIT_MINUTES, settings.HAVEN_JOB_PICKUP_SECONDS = 45, 60
    backup = dispatch.signed_message(machine, protocol.BACKUP_TASK, "t-1", {"job_id": "j"})
    auth = backup[AUTH_KWARG]
    issued, expires = (datetime.fromisoformat(auth[k]) for k in ("issued_at", "expires_at"))
    assert expires - issued == timedelta(minutes=46)
    settings.HAVEN_JOB_AGENT_WAIT_MINUTES = 10_000  # never more than a day
    assert dispatch.message_lifetime(protocol.BACKUP_TASK) == timedelta(days=1)
    # An offline machine still gets its policy when back; the version check guards it.
    assert dispatch.message_lifetime(protocol.POLICY_TASK) == MAX_AGE
