"""Sending a task to an agent (``agents.dispatch.send_after_commit``): signed, delivered only
after commit, and never undoing the caller's work when the message cannot go out."""

from __future__ import annotations

import logging

import pytest
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError

from agents import dispatch
from agents.runtime import protocol
from agents.runtime.tasksig import AUTH_KWARG
from tests.support import builders


@pytest.fixture
def machine(vault):
    return builders.make_machine(vault=vault, name="web-01")


@pytest.fixture
def broker(monkeypatch):
    """Messages the portal's Celery app was asked to send, as (task, kwargs, queue)."""
    sent: list[tuple[str, dict, str]] = []

    def send_task(name, *, kwargs, task_id, queue):
        sent.append((name, kwargs, queue))

    monkeypatch.setattr(dispatch.portal_app, "send_task", send_task)
    return sent


def test_the_signed_message_goes_to_the_machines_queue_after_commit(
    machine, broker, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        task_id = dispatch.send_after_commit(machine, protocol.PING_TASK, note="hello")
        assert broker == []  # not before the row the agent will look for is committed
    assert task_id
    [(name, kwargs, queue)] = broker
    assert name == protocol.PING_TASK and queue == machine.queue
    assert kwargs["note"] == "hello" and kwargs[AUTH_KWARG]["signature"]


def test_nothing_is_sent_to_an_unregistered_machine(
    machine, broker, caplog, django_capture_on_commit_callbacks
):
    machine.unregistered_at = timezone.now()
    with caplog.at_level(logging.WARNING), django_capture_on_commit_callbacks(execute=True):
        assert dispatch.send_after_commit(machine, protocol.CANCEL_TASK, job_id="j") is None
    assert broker == []
    assert "the machine is unregistered" in caplog.text


def test_a_broker_that_refuses_is_logged_and_the_callers_work_stands(
    machine, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to localhost:6379. Connection refused.")

    monkeypatch.setattr(dispatch.portal_app, "send_task", refuse)
    with caplog.at_level(logging.WARNING), django_capture_on_commit_callbacks(execute=True):
        dispatch.send_after_commit(machine, protocol.BACKUP_TASK, job_id="j")
    assert f"could not send {protocol.BACKUP_TASK} to {machine.pk}" in caplog.text


def test_a_message_expires_when_its_job_would_fail_for_waiting_and_a_policy_lasts(
    machine, settings
):
    from datetime import datetime, timedelta

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
