"""Sending a task to one machine's agent, signed by the portal: ``send_after_commit``.

    from agents.dispatch import send_after_commit
    from agents.runtime import protocol
    task_id = send_after_commit(machine, protocol.PING_TASK, note="hello")

The message goes to the machine's own queue ``agent.<machine id>`` after the current
transaction commits (so the agent never looks for a row that is not there yet), with the
portal's Ed25519 signature over task name, id, machine, args, kwargs, issue time and expiry
(``agents.runtime.tasksig``). A message expires when the job it carries would have failed
for waiting (``message_lifetime``); the agent runs each task id once. Keyword arguments must be JSON values. Task names are the
wire's (``agents.runtime.protocol``); the functions behind them are in
``agents/runtime/tasks.py``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from kombu.exceptions import KombuError

from agents.models import Machine
from agents.runtime import protocol
from agents.runtime.tasksig import AUTH_KWARG, MAX_AGE, signed_bytes, to_json_native
from portal import signing
from portal.celery import app as portal_app

log = logging.getLogger(__name__)


# A message never outlives a day, whatever the waiting time is set to (but the policy's).
MAX_MESSAGE_LIFETIME = timedelta(days=1)


def message_lifetime(task_name: str) -> timedelta:
    """How long a message stays valid: as long as its job may wait for the agent before
    ``jobs_sweep`` fails it (a later run would be for a job already failed, or a replay).
    The policy is the exception: an offline machine must still get it when it is back, and
    the agent refuses a version older than the one it applied."""
    if task_name == protocol.POLICY_TASK:
        return MAX_AGE
    waiting = timedelta(
        minutes=settings.HAVEN_JOB_AGENT_WAIT_MINUTES, seconds=settings.HAVEN_JOB_PICKUP_SECONDS
    )
    return min(waiting, MAX_MESSAGE_LIFETIME)


def signed_message(
    machine: Machine, task_name: str, task_id: str, kwargs: dict, *, now: datetime | None = None
) -> dict:
    """The kwargs to send, with the signature added under ``AUTH_KWARG``."""
    if AUTH_KWARG in kwargs:
        raise ValueError(f"{AUTH_KWARG} is reserved for the signature")
    kwargs = to_json_native(kwargs)
    issued = now or datetime.now(UTC)
    issued_at = issued.isoformat()
    expires_at = (issued + message_lifetime(task_name)).isoformat()
    data = signed_bytes(
        task=task_name,
        task_id=task_id,
        machine_id=str(machine.pk),
        args=[],
        kwargs=kwargs,
        issued_at=issued_at,
        expires_at=expires_at,
    )
    auth = {"signature": signing.sign(data), "issued_at": issued_at, "expires_at": expires_at}
    return {**kwargs, AUTH_KWARG: auth}


def send_after_commit(machine: Machine, task_name: str, **kwargs) -> str | None:
    """Queue ``task_name(**kwargs)`` for ``machine``'s agent once the caller's transaction
    commits (at once outside one); returns the task id, or None when nothing will be sent.

    The rule: what the caller did stands, whatever becomes of the message. The message is
    signed now, so a broken signing key raises here and the caller's transaction rolls
    back. A machine that cannot receive (unregistered) or a broker that does not take the
    message (``KombuError``: Redis down, or refusing) is logged as a warning naming the task
    and the machine, and not raised. The Job row is the truth: a job whose message never
    arrived goes Waiting for agent and ``jobs_sweep`` fails it with a reason the person can
    act on; a question nobody answers times out on the Recover Data page.
    """
    if machine.unregistered_at is not None:
        log.warning("%s not sent to %s: the machine is unregistered", task_name, machine.pk)
        return None
    task_id = str(uuid.uuid4())
    message = signed_message(machine, task_name, task_id, kwargs)
    queue, machine_id = machine.queue, machine.pk

    def send() -> None:
        try:
            deliver(queue, task_name, task_id, message)
        except KombuError:
            log.warning("could not send %s to %s", task_name, machine_id, exc_info=True)

    transaction.on_commit(send)
    return task_id


def deliver(queue: str, task_name: str, task_id: str, message: dict, *, app=None) -> None:
    """Put one signed message on ``queue`` now (``app``: the portal's Celery app)."""
    (app or portal_app).send_task(task_name, kwargs=message, task_id=task_id, queue=queue)
