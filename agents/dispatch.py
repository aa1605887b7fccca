"""Sending a task to one machine's agent, signed by the portal, through an outbox.

    from agents.dispatch import send_after_commit
    from agents.runtime import protocol
    task_id = send_after_commit(machine, protocol.BACKUP_TASK, job_id=str(job.pk))

The message is signed at the call, with the portal's Ed25519 signature over task name, id,
machine, args, kwargs, issue time and expiry (``agents.runtime.tasksig``), and written as an
``AgentMessage`` row in the caller's transaction: the work and the message to do it commit
together or not at all. After the commit it goes to the machine's own queue
``agent.<machine id>`` at once (the fast path); when the broker does not take it (Redis
down, restarting, refusing; the embedded broker's folder unwritable) the row stays unsent
and the portal worker's ``agents.outbox_send`` (beat, every ``OUTBOX_SECONDS``, and when the
worker starts) sends it, oldest first per machine, with a growing pause between tries. A
row is given up only when its signed message has expired, since the agent would refuse it
then; the jobs app is told (``register_undeliverable_handler``) and fails the job with
words a person can act on.

Delivery is at least once: a message can be sent twice (the fast path and the worker race,
or the broker took it but the answer was lost). That is harmless because the agent runs
each task id once (``tasks-seen.json``) and refuses an expired one.

A message expires when the job it carries would have failed for waiting
(``message_lifetime``). Keyword arguments must be JSON values. Task names are the wire's
(``agents.runtime.protocol``); the functions behind them are in ``agents/runtime/tasks.py``.

Questions a person is waiting for (Recover Data's browse, search, versions, points) do not
go through the outbox: ``ask_now`` sends them at once and raises ``BrokerUnreachable``, so
the page says so straight away; an answer minutes later, after the page gave up, would help
nobody.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis.exceptions
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import KombuError

from agents.models import AgentMessage, Machine
from agents.runtime import protocol
from agents.runtime.tasksig import AUTH_KWARG, MAX_AGE, signed_bytes, to_json_native
from portal import signing
from portal.celery import app as portal_app

log = logging.getLogger(__name__)


# A message never outlives a day, whatever the waiting time is set to (but the policy's).
MAX_MESSAGE_LIFETIME = timedelta(days=1)
# How often beat runs the outbox; the pause between tries of one message grows to at most
# BACKOFF_MAX; a sender holds a row it is sending for CLAIM, so two senders rarely both do.
OUTBOX_SECONDS = 10
BACKOFF_MAX = timedelta(seconds=60)
CLAIM = timedelta(seconds=60)
# Sent and given-up rows are kept this long (to see what was sent), then deleted.
KEEP = timedelta(days=1)
# Rows looked at per pass: a large fleet's backlog drains over a few passes.
BATCH = 1000

# What a broker that does not take a message raises: kombu's errors (Celery wraps the
# transport's connection errors in them), the Redis client's own, and the embedded
# filesystem transport's OSError (folder missing, unwritable, disk full).
SEND_ERRORS: tuple[type[BaseException], ...] = (KombuError, OSError, redis.exceptions.RedisError)


class BrokerUnreachable(Exception):
    """The broker did not take a message that cannot wait (``ask_now``)."""


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
    """Queue ``task_name(**kwargs)`` for ``machine``'s agent: the signed message is written
    to the outbox in the caller's transaction and sent once it commits (at once outside
    one); returns the task id, or None when nothing will be sent.

    The rule: what the caller did stands, whatever becomes of the message, and nothing the
    caller committed is lost. A broken signing key raises here, so the caller's
    transaction rolls back. An unregistered machine gets nothing (logged). A broker that
    does not take the message is logged, never raised: the row stays in the outbox and the
    portal worker sends it when the broker is back; the job's page says "Waiting for the
    message broker" meanwhile (``pending_for_jobs``).
    """
    if machine.unregistered_at is not None:
        log.warning("%s not sent to %s: the machine is unregistered", task_name, machine.pk)
        return None
    task_id = str(uuid.uuid4())
    now = timezone.now()
    message = signed_message(machine, task_name, task_id, kwargs, now=now)
    job_id = kwargs.get("job_id")
    row = AgentMessage.objects.create(
        machine=machine,
        queue=machine.queue,
        task_name=task_name,
        task_id=task_id,
        kwargs=message,
        job_id=uuid.UUID(str(job_id)) if job_id else None,
        created_at=now,
        expires_at=datetime.fromisoformat(message[AUTH_KWARG]["expires_at"]),
        next_attempt_at=now,
    )
    transaction.on_commit(lambda: _send_first(row.pk))
    return task_id


def ask_now(machine: Machine, task_name: str, **kwargs) -> str:
    """Send a question a person is waiting for, now and not through the outbox; returns
    the task id. Raises ``BrokerUnreachable`` (with the broker's words) when the broker
    does not take it. Call it outside a transaction, or after what the agent will look up
    has committed."""
    if machine.unregistered_at is not None:
        raise BrokerUnreachable(f"{machine.name} is unregistered")
    task_id = str(uuid.uuid4())
    message = signed_message(machine, task_name, task_id, kwargs)
    try:
        deliver(machine.queue, task_name, task_id, message, retry=False)
    except SEND_ERRORS as exc:
        log.warning("could not send %s to %s: %s", task_name, machine.pk, _words(exc))
        raise BrokerUnreachable(_words(exc)) from None
    return task_id


def deliver(
    queue: str, task_name: str, task_id: str, message: dict, *, app=None, retry: bool = True
) -> None:
    """Put one signed message on ``queue`` now (``app``: the portal's Celery app).
    ``retry=False``: one try, for a caller that a person is waiting on."""
    (app or portal_app).send_task(
        task_name, kwargs=message, task_id=task_id, queue=queue, retry=retry
    )


# -- the outbox ------------------------------------------------------------------------------
def _pending():
    return AgentMessage.objects.filter(sent_at__isnull=True, abandoned_at__isnull=True)


def backoff(attempts: int) -> timedelta:
    """The pause after ``attempts`` failed tries: 10 s, 20 s, 40 s, then every minute."""
    return min(timedelta(seconds=5 * 2 ** max(attempts, 1)), BACKOFF_MAX)


def _words(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:500]


def _send_first(pk: int) -> None:
    """The fast path, just after commit: send unless an older message to the same machine
    is still waiting (the outbox keeps each machine's messages in order)."""
    row = _pending().filter(pk=pk).first()
    if row is None:
        return
    older = _pending().filter(machine_id=row.machine_id, pk__lt=row.pk).order_by("-pk").first()
    if older is not None:
        if older.last_error:  # its job's page says what holds it up
            words = f"behind an earlier message to this machine: {older.last_error}"
            _pending().filter(pk=row.pk).update(last_error=words[:500])
        return
    refused = _recent_refusal()
    if refused:  # don't make every request wait on a broker that just refused
        words = f"not tried: the broker refused a message moments ago ({refused})"
        _pending().filter(pk=row.pk).update(last_error=words[:500])
        return
    if _claim(row, timezone.now()):
        _attempt(row, retry=False)


# After a refusal, this process leaves new messages to the outbox for a few seconds (until
# a send succeeds): a scheduler tick starting many jobs, or requests, do not each wait for
# the broker's connect timeout while it is away.
FAST_PATH_PAUSE = 10.0
_refused: dict[str, object] = {"until": 0.0, "error": ""}


def _recent_refusal() -> str:
    if time.monotonic() < _refused["until"]:  # type: ignore[operator]
        return str(_refused["error"])
    return ""


def _note_refusal(error: str | None) -> None:
    if error is None:
        _refused["until"] = 0.0
    else:
        _refused.update(until=time.monotonic() + FAST_PATH_PAUSE, error=error)


def _claim(row: AgentMessage, now: datetime) -> bool:
    """Take the row for one try, unless another sender just did."""
    claimed = _pending().filter(pk=row.pk, next_attempt_at=row.next_attempt_at)
    until = now + CLAIM
    if not claimed.update(next_attempt_at=until):
        return False
    row.next_attempt_at = until
    return True


def _attempt(row: AgentMessage, *, retry: bool) -> str | None:
    """Try to send one claimed row; returns the broker's error, or None once sent."""
    now = timezone.now()
    try:
        deliver(row.queue, row.task_name, row.task_id, row.kwargs, retry=retry)
    except SEND_ERRORS as exc:
        error = _words(exc)
        AgentMessage.objects.filter(pk=row.pk).update(
            attempts=F("attempts") + 1,
            last_error=error,
            last_attempt_at=now,
            next_attempt_at=now + backoff(row.attempts + 1),
        )
        log.warning(
            "could not send %s [%s] to %s (try %d, kept in the outbox): %s",
            row.task_name, row.task_id, row.machine_id, row.attempts + 1, error,
        )  # fmt: skip
        _note_refusal(error)
        if not row.attempts:  # from now on its job's page says it waits for the broker
            _notify(_changed_handlers, row)
        return error
    AgentMessage.objects.filter(pk=row.pk).update(
        sent_at=now, attempts=F("attempts") + 1, last_attempt_at=now
    )
    _note_refusal(None)
    if row.attempts or row.last_error:  # the page said it waited; now it may stop
        log.info("sent %s [%s] to %s after %d failed tries", row.task_name, row.task_id,
                 row.machine_id, row.attempts)  # fmt: skip
        _notify(_changed_handlers, row)
    return None


def outbox_send(*, now: datetime | None = None) -> dict:
    """One pass of the portal worker: give up on expired messages, send the due ones
    oldest first per machine, forget old sent ones; returns counts. At the first refusal
    the pass stops (the broker is down for everyone; the next pass tries again), and the
    other due rows wait as long as the refused one, keeping its error."""
    now = now or timezone.now()
    counts = {"sent": 0, "failed": 0, "abandoned": 0, "purged": 0}
    counts["abandoned"] = _abandon_expired(now)
    stalled: set = set()
    rows = list(_pending().filter(expires_at__gt=now).order_by("id")[:BATCH])
    for index, row in enumerate(rows):
        if row.machine_id in stalled:
            continue
        if row.next_attempt_at > now or not _claim(row, now):
            stalled.add(row.machine_id)  # an older one is backing off or being sent
            continue
        error = _attempt(row, retry=True)
        if error is None:
            counts["sent"] += 1
            continue
        counts["failed"] += 1
        later = [r.pk for r in rows[index + 1 :] if r.next_attempt_at <= now]
        _pending().filter(pk__in=later).update(
            last_error=error, next_attempt_at=now + backoff(row.attempts + 1)
        )
        break
    old = now - KEEP
    counts["purged"], _ = AgentMessage.objects.filter(
        Q(sent_at__lt=old) | Q(abandoned_at__lt=old)
    ).delete()
    return counts


def _abandon_expired(now: datetime) -> int:
    """Give up on messages the agent would refuse (expired) and on those to machines
    unregistered since (their jobs end with the machine; nobody consumes the queue)."""
    gone = _pending().filter(machine__unregistered_at__isnull=False)
    given_up = gone.update(abandoned_at=now, last_error="the machine was unregistered")
    for row in _pending().filter(expires_at__lte=now).order_by("id")[:BATCH]:
        if _pending().filter(pk=row.pk).update(abandoned_at=now):
            given_up += 1
            log.error(
                "gave up on %s [%s] to %s after %d tries: %s",
                row.task_name, row.task_id, row.machine_id, row.attempts,
                row.last_error or "never sent",
            )  # fmt: skip
            row.abandoned_at = now
            _notify(_undeliverable_handlers, row)
    return given_up


def pending_for_jobs(job_ids) -> dict:
    """``{job id: the oldest unsent message starting it}`` for the jobs given."""
    rows = _pending().filter(job_id__in=list(job_ids)).order_by("id")
    found: dict = {}
    for row in rows:
        found.setdefault(row.job_id, row)
    return found


# -- who hears about it ---------------------------------------------------------------------
# The jobs app registers these in its ready(): a job's page says "waiting for the message
# broker" from the first refusal and stops once the message went (changed), and a job whose
# message expired unsent fails (undeliverable).
Handler = Callable[[AgentMessage], None]
_changed_handlers: list[Handler] = []
_undeliverable_handlers: list[Handler] = []


def register_changed_handler(handler: Handler) -> None:
    if handler not in _changed_handlers:
        _changed_handlers.append(handler)


def register_undeliverable_handler(handler: Handler) -> None:
    if handler not in _undeliverable_handlers:
        _undeliverable_handlers.append(handler)


def _notify(handlers: list[Handler], row: AgentMessage) -> None:
    for handler in handlers:
        handler(row)
