"""Sending a task to one machine's agent, signed by the portal.

    from agents.dispatch import send_to_machine
    task_id = send_to_machine(machine, "haven.agent.ping", note="hello")

The message goes to the machine's own queue ``agent.<machine id>`` after the current
transaction commits (so the agent never looks for a row that is not there yet), with the
portal's Ed25519 signature over task name, id, machine, args, kwargs and issue time
(``agents.runtime.tasksig``). Keyword arguments must be JSON values. Task names and the
functions behind them are in ``agents/runtime/tasks.py``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from django.db import transaction

from agents.models import Machine
from agents.runtime.tasksig import AUTH_KWARG, signed_bytes, to_json_native
from portal import signing


class MachineUnavailable(Exception):
    """The machine is unregistered: nothing can be sent to it."""


def signed_message(machine: Machine, task_name: str, task_id: str, kwargs: dict) -> dict:
    """The kwargs to send, with the signature added under ``AUTH_KWARG``."""
    if AUTH_KWARG in kwargs:
        raise ValueError(f"{AUTH_KWARG} is reserved for the signature")
    kwargs = to_json_native(kwargs)
    issued_at = datetime.now(UTC).isoformat()
    data = signed_bytes(
        task=task_name,
        task_id=task_id,
        machine_id=str(machine.pk),
        args=[],
        kwargs=kwargs,
        issued_at=issued_at,
    )
    return {**kwargs, AUTH_KWARG: {"signature": signing.sign(data), "issued_at": issued_at}}


def send_to_machine(machine: Machine, task_name: str, **kwargs) -> str:
    """Queue ``task_name(**kwargs)`` for ``machine``'s agent after commit; returns the task id."""
    if machine.unregistered_at is not None:
        raise MachineUnavailable(f"machine {machine.name} is unregistered")
    task_id = str(uuid.uuid4())
    message = signed_message(machine, task_name, task_id, kwargs)
    queue = machine.queue
    transaction.on_commit(lambda: deliver(queue, task_name, task_id, message))
    return task_id


def deliver(queue: str, task_name: str, task_id: str, message: dict, *, app=None) -> None:
    """Put one signed message on ``queue`` now (``app``: the portal's Celery app)."""
    if app is None:
        from portal.celery import app
    app.send_task(task_name, kwargs=message, task_id=task_id, queue=queue)
