"""Signed task messages: the portal signs every task it sends to an agent, the agent's
worker verifies before running it.

The signature (Ed25519, the portal's key from ``portal.signing``) covers the canonical
JSON of the task name, task id, target machine id, args, kwargs, the issue time and the
expiry, and travels in the reserved keyword argument ``AUTH_KWARG``. So a message another
party put on the queue, a message for another machine, or one whose arguments were changed
on the way, does not verify. Only the portal holds the private key; agents hold the public
key they received at registration.

Replays: a captured message stays genuine, so each one is valid only until its expiry (the
portal signs one close to how long the job waits for its agent, ``agents.dispatch``), and
its task id is unique and signed: the worker refuses an id it has already run while the
message could still be valid (``SeenTasks``, a small file in the agent's private config
folder). The policy task also carries its version; the agent refuses one older than the
policy it applied (``agents.runtime.jobs.policy``).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

AUTH_KWARG = "_haven_auth"
# No message is valid longer than this, whatever its signed expiry says (the policy task,
# which an offline machine must still get when it is back, lives this long).
MAX_AGE = timedelta(days=30)
# How far this machine's clock may be from the portal's: a message issued up to this far in
# the future, or expired less than this long ago, is still accepted.
CLOCK_TOLERANCE = timedelta(minutes=5)
SEEN_TASKS_FILE = "tasks-seen.json"

log = logging.getLogger("haven.agent.tasksig")


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
    expires_at: str,
) -> bytes:
    body = {
        "task": task,
        "id": task_id,
        "machine": str(machine_id),
        "args": to_json_native(list(args or [])),
        "kwargs": to_json_native({k: v for k, v in (kwargs or {}).items() if k != AUTH_KWARG}),
        "issued_at": issued_at,
        "expires_at": expires_at,
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
) -> datetime:
    """Raise ``TaskRefused`` unless the message carries a valid, unexpired portal signature
    for this machine; returns its expiry. ``kwargs`` still contains ``AUTH_KWARG``."""
    auth = (kwargs or {}).get(AUTH_KWARG)
    if not isinstance(auth, dict) or not auth.get("signature"):
        raise TaskRefused(f"task {task} [{task_id}] is not signed by the portal")
    issued_at = str(auth.get("issued_at", ""))
    expires_at = str(auth.get("expires_at", ""))
    data = signed_bytes(
        task=task,
        task_id=task_id,
        machine_id=machine_id,
        args=args,
        kwargs=kwargs,
        issued_at=issued_at,
        expires_at=expires_at,
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
        issued, expires = datetime.fromisoformat(issued_at), datetime.fromisoformat(expires_at)
    except ValueError:
        raise TaskRefused(f"task {task} [{task_id}] has no valid issue time or expiry") from None
    if issued.tzinfo is None or expires.tzinfo is None or not issued < expires <= issued + MAX_AGE:
        raise TaskRefused(f"task {task} [{task_id}] has no valid issue time or expiry")
    current = now or datetime.now(UTC)
    if issued > current + CLOCK_TOLERANCE:
        raise TaskRefused(
            f"task {task} [{task_id}] was issued at {issued_at}, later than this machine's "
            f"time {current.isoformat(timespec='seconds')}: check this machine's clock"
        )
    if current > expires + CLOCK_TOLERANCE:
        raise TaskRefused(
            f"task {task} [{task_id}] expired at {expires_at} (this machine's time is "
            f"{current.isoformat(timespec='seconds')}): it waited too long in the queue or is "
            "a replay; if this machine's clock is wrong, check this machine's clock"
        )
    return expires


class SeenTasks:
    """The ids of the tasks this agent has started, each kept until its message expires
    (then the expiry alone refuses it): a JSON file ``{task id: expiry}``, written
    atomically under a lock, 0600 in the agent's private folder."""

    def __init__(self, path: Path):
        self.path = path

    def start(
        self, *, task: str, task_id: str, expires: datetime, now: datetime | None = None
    ) -> None:
        """Record ``task_id`` as run; ``TaskRefused`` when it already was (a replay)."""
        current = now or datetime.now(UTC)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            seen = self._load()
            if task_id in seen:
                raise TaskRefused(
                    f"task {task} [{task_id}] was already run by this agent: a replayed "
                    "message is never run twice"
                )
            horizon = (current - CLOCK_TOLERANCE).timestamp()
            seen = {k: v for k, v in seen.items() if v >= horizon}
            seen[task_id] = expires.timestamp()
            self._save(seen)

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); starting a new list of run tasks", self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}

    def _save(self, seen: dict[str, float]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(json.dumps(seen, separators=(",", ":")).encode())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
