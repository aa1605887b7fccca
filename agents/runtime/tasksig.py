"""Signed task messages: the portal signs every task it sends to an agent, the agent's
worker verifies before running it.

The signature (Ed25519, the portal's key from ``portal.signing``) covers the canonical
JSON of the task name, task id, target machine id, args, kwargs and the issue time, and
travels in the reserved keyword argument ``AUTH_KWARG``. So a message another party put on
the queue, a message for another machine, or one whose arguments were changed on the way,
does not verify. Only the portal holds the private key; agents hold the public key they
received at registration.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

AUTH_KWARG = "_haven_auth"
# A task older than this is refused: it was queued for a machine that was offline very
# long, or it is a replay of an old message.
MAX_AGE = timedelta(days=30)
MAX_CLOCK_AHEAD = timedelta(minutes=10)


class TaskRefused(Exception):
    """A task message this worker will not run; the message says why."""


def to_json_native(value: Any) -> Any:
    """What the value looks like after a JSON round trip (tuples become lists, ...)."""
    return json.loads(json.dumps(value))


def signed_bytes(
    *,
    task: str,
    task_id: str,
    machine_id: str,
    args: Iterable[Any] | None,
    kwargs: dict[str, Any] | None,
    issued_at: str,
) -> bytes:
    body = {
        "task": task,
        "id": task_id,
        "machine": str(machine_id),
        "args": to_json_native(list(args or [])),
        "kwargs": to_json_native({k: v for k, v in (kwargs or {}).items() if k != AUTH_KWARG}),
        "issued_at": issued_at,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def verify_task(
    *,
    task: str,
    task_id: str,
    args: Iterable[Any] | None,
    kwargs: dict[str, Any],
    machine_id: str,
    public_key_b64: str,
    now: datetime | None = None,
) -> None:
    """Raise ``TaskRefused`` unless the message carries a valid portal signature for this
    machine. ``kwargs`` still contains ``AUTH_KWARG``."""
    auth = (kwargs or {}).get(AUTH_KWARG)
    if not isinstance(auth, dict) or not auth.get("signature"):
        raise TaskRefused(f"task {task} [{task_id}] is not signed by the portal")
    issued_at = str(auth.get("issued_at", ""))
    data = signed_bytes(
        task=task,
        task_id=task_id,
        machine_id=machine_id,
        args=args,
        kwargs=kwargs,
        issued_at=issued_at,
    )
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        key.verify(base64.b64decode(str(auth["signature"])), data)
    except (InvalidSignature, ValueError, TypeError):
        raise TaskRefused(
            f"task {task} [{task_id}] has a signature that does not verify with the portal's "
            "key (forged, altered, or meant for another machine)"
        ) from None
    try:
        moment = datetime.fromisoformat(issued_at)
    except ValueError:
        raise TaskRefused(f"task {task} [{task_id}] has no valid issue time") from None
    current = now or datetime.now(UTC)
    if moment.tzinfo is None or moment < current - MAX_AGE or moment > current + MAX_CLOCK_AHEAD:
        raise TaskRefused(
            f"task {task} [{task_id}] was issued at {issued_at}, outside the accepted window "
            "(check this machine's clock)"
        )
