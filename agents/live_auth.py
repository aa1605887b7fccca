"""Machine tokens and rate limits for the agent API's hot path, in the server's event loop.

The portal answers a few hundred agent requests a second (each running backup reports its
progress once a second, each machine heart-beats once a minute). Asking the database which
machine a token belongs to on every one of them, twice (``portal.gate`` before the body,
then the view), was a third of a progress report's cost. Here:

- ``live_machine(authorization)``: the machine a bearer token names, from a small
  in-process cache keyed by the token's hash; a miss asks the database (on a thread of
  its own, the misses that come together in one query) with the same rule as ``agents.api_auth`` (an unrevoked token of a machine
  that is not unregistered). **Bound**: a live answer is trusted for
  ``TOKEN_CACHE_SECONDS``, so a revoked token or an unregistered machine is refused by
  every portal process at most that long after the change (docs/security.md). A refusal
  is never cached: a token only ever goes from live to dead.
- ``rate_count(machine_id)``: the per-machine request count of this minute, counted in
  the process and added to the same Redis key ``agents.api_auth.over_limit`` counts in a
  few times a second (one round trip for all machines), so both paths share one limit.

Only with Redis (``REDIS_URL``); without it the hot path stays off and Django's views
answer everything (``portal.hotpath``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, timedelta

import redis.exceptions
from django.db import connection
from django.utils import timezone

from agents.api_auth import LAST_USED_RESOLUTION_SECONDS, TOKEN_PREFIX, token_hash
from portal.pools import LoopBatches, ProcessThreadPool, cache_key, db_in_executor, loop_redis

log = logging.getLogger(__name__)

TOKEN_CACHE_SECONDS = 5.0
TOKEN_CACHE_ENTRIES = 20_000
RATE_SCOPE = "agent-api-rate"  # agents.api_auth._rate_limited's scope
RATE_KEY_SECONDS = 120
RATE_SYNC_SECONDS = 0.2
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


@dataclass(frozen=True)
class LiveMachine:
    machine_id: uuid.UUID
    vault_id: uuid.UUID | None


class _TokenCache:
    """``token hash -> (expires at, LiveMachine)``; the oldest half goes when full."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, LiveMachine]] = {}

    def get(self, digest: str) -> LiveMachine | None:
        found = self.entries.get(digest)
        if found is None:
            return None
        if found[0] < time.monotonic():
            self.entries.pop(digest, None)
            return None
        return found[1]

    def put(self, digest: str, machine: LiveMachine) -> None:
        if len(self.entries) >= TOKEN_CACHE_ENTRIES:
            for key in list(self.entries)[: TOKEN_CACHE_ENTRIES // 2]:  # insertion order
                del self.entries[key]
        self.entries[digest] = (time.monotonic() + TOKEN_CACHE_SECONDS, machine)

    def clear(self) -> None:
        self.entries.clear()


_tokens = _TokenCache()


def forget_tokens() -> None:
    """Drop every cached answer (tests; a process that revokes tokens need not call it)."""
    _tokens.clear()


def _bearer(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        return None
    return token


def load_machines(digests: list[str]) -> list[LiveMachine | None]:
    """The database's answer for each token hash of ``digests`` (``agents.api_auth.
    _live_token``'s rule), in one query, and the tokens' ``last_used_at`` kept to the minute
    as ``machine_from_request`` does (written for those due). Plain SQL: the ORM's query
    compilation cost more than the query. On PostgreSQL both are one statement (the write
    a CTE of the read): a fleet's burst of starts waits for each batch of its tokens, and
    a second round trip was a second wait for the interpreter on a busy process."""
    from agents.models import Machine, MachineToken

    quote = connection.ops.quote_name
    tokens, machines = quote(MachineToken._meta.db_table), quote(Machine._meta.db_table)
    field = MachineToken._meta.get_field
    pk_column, used = quote(field("id").column), quote(field("last_used_at").column)
    wanted = sorted(set(digests))
    found = (
        f"SELECT t.token_hash, t.id, t.machine_id, m.vault_id, t.last_used_at FROM {tokens} t "
        f"JOIN {machines} m ON m.id = t.machine_id "
        f"WHERE t.token_hash IN ({', '.join(['%s'] * len(wanted))}) "
        "AND t.revoked_at IS NULL AND m.unregistered_at IS NULL"
    )
    now = timezone.now()
    at = field("last_used_at").get_db_prep_value(now, connection)
    if connection.vendor == "postgresql":
        due_before = now - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS)
        with connection.cursor() as cursor:
            # Two of these at once (two threads) never wait for each other: a row the
            # other is writing is skipped, in id order.
            cursor.execute(
                f"WITH found AS MATERIALIZED ({found}), "
                f"touched AS (UPDATE {tokens} SET {used} = %s WHERE {pk_column} IN "
                f"(SELECT {pk_column} FROM {tokens} WHERE {pk_column} IN "
                "(SELECT id FROM found WHERE last_used_at IS NULL OR last_used_at < %s) "
                f"ORDER BY {pk_column} FOR UPDATE SKIP LOCKED)) "
                "SELECT token_hash, machine_id, vault_id FROM found",
                [*wanted, at, due_before],
            )
            rows = cursor.fetchall()
        return _answers(digests, rows)
    with connection.cursor() as cursor:
        cursor.execute(found, wanted)
        rows = cursor.fetchall()
    due = [
        pk
        for _, pk, _, _, last_used_at in rows
        if last_used_at is None
        or (now - _aware(last_used_at)).total_seconds() > LAST_USED_RESOLUTION_SECONDS
    ]
    if due:
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {tokens} SET {used} = %s "
                f"WHERE {pk_column} IN ({', '.join(['%s'] * len(due))})",
                [at, *due],
            )
    return _answers(digests, [(digest, m, v) for digest, _, m, v, _ in rows])


def _answers(digests: list[str], rows: list[tuple]) -> list[LiveMachine | None]:
    """``rows`` of (token hash, machine id, vault id) as the answer for each of ``digests``."""
    found = {
        digest: LiveMachine(machine_id=_uuid(machine_id), vault_id=_uuid(vault_id))
        for digest, machine_id, vault_id in rows
    }
    return [found.get(digest) for digest in digests]


def _uuid(value) -> uuid.UUID | None:
    # PostgreSQL gives UUIDs; SQLite the 32 hex digits Django stores.
    return None if value is None else value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def _aware(value):
    # SQLite's raw rows give text and naive times; PostgreSQL's give aware ones.
    from django.utils.dateparse import parse_datetime

    if isinstance(value, str):
        value = parse_datetime(value)
    return value if timezone.is_aware(value) else timezone.make_aware(value, UTC)


# The tokens asked for while one query runs go together in the next, on a thread of their
# own (every heart-beat, once a minute per machine, is a miss; a fleet's starts are 200).
TOKEN_BATCH_MAX = 500
TOKEN_THREADS = 2
_token_threads = ProcessThreadPool(max_workers=TOKEN_THREADS, thread_name_prefix="haven-tokens")
_load = LoopBatches(
    db_in_executor(load_machines, _token_threads), TOKEN_BATCH_MAX, parallel=TOKEN_THREADS
)


async def live_machine(authorization: str) -> LiveMachine | None:
    """The machine of a live bearer token in an ``Authorization`` header, or None."""
    token = _bearer(authorization)
    if token is None:
        return None
    digest = token_hash(token)
    machine = _tokens.get(digest)
    if machine is None:
        machine = await _load(digest)
        if machine is not None:
            _tokens.put(digest, machine)
    return machine


class _RateCounts:
    """Per-machine request counts of this minute, counted here and added to the shared
    Redis counters every ``RATE_SYNC_SECONDS`` in one round trip (``INCRBY``, whose answer
    is every process's count so far). A request is over the limit when the shared count
    last read plus this process's unsent count is: the limit holds across processes to
    within what they count in that fraction of a second. While Redis is unreachable the
    counts stay here (a limit per process, as ``agents.api_auth`` falls back to)."""

    def __init__(self) -> None:
        self.window = -1
        self.shared: dict[str, int] = {}  # key -> count read back from Redis
        self.pending: dict[str, int] = {}  # key -> counted here, not yet sent
        self.scheduled: asyncio.AbstractEventLoop | None = None

    def hit(self, machine_id) -> int:
        window = int(time.time() // 60)
        if window != self.window:  # a new minute: its counters start afresh
            self.window, self.shared, self.pending = window, {}, {}
        key = cache_key(f"{RATE_SCOPE}:{machine_id}:{window}")
        self.pending[key] = self.pending.get(key, 0) + 1
        loop = asyncio.get_running_loop()
        if self.scheduled is not loop:  # not yet, or on a loop that has ended since
            self.scheduled = loop
            loop.call_later(RATE_SYNC_SECONDS, lambda: loop.create_task(self.sync()))
        return self.shared.get(key, 0) + self.pending[key]

    async def sync(self) -> None:
        self.scheduled = None
        sending, window = self.pending, self.window
        self.pending = {}
        if not sending:
            return
        try:
            pipe = loop_redis().pipeline(transaction=False)
            for key, count in sending.items():
                pipe.incrby(key, count)
                pipe.expire(key, RATE_KEY_SECONDS)
            answers = await pipe.execute()
        except REDIS_ERRORS as exc:
            log.info("rate counts kept in this process: %s: %s", type(exc).__name__, exc)
            if window == self.window:
                for key, count in sending.items():
                    self.shared[key] = self.shared.get(key, 0) + count
            return
        if window == self.window:
            for key, total in zip(sending, answers[::2], strict=True):
                self.shared[key] = int(total)


_rates = _RateCounts()


def rate_count(machine_id) -> int:
    """Count one request of the machine in this minute (``agents.api_auth.over_limit``'s
    counter, shared by every process); the count so far. On the event loop."""
    return _rates.hit(machine_id)
