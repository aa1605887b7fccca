"""Machine tokens and rate limits for the agent API's hot path, in the server's event loop.

The portal answers a few hundred agent requests a second (each running backup reports its
progress once a second, each machine heart-beats once a minute). Asking the database which
machine a token belongs to on every one of them, twice (``portal.gate`` before the body,
then the view), was a third of a progress report's cost. Here:

- ``live_machine(authorization)``: the machine a bearer token names, from an in-process
  cache keyed by the token's hash; a miss asks the database (on a thread of its own, the
  misses that come together in one query) with the same rule as ``agents.api_auth`` (an
  unrevoked token of a machine that is not unregistered). A process's first call also
  loads every live token in the background (``load_every_machine``), so a fleet's first
  heart-beats and a schedule's burst of starts find theirs there.
- **Bound.** The database keeps a counter that its triggers bump whenever a token may have
  stopped being live (revoked, changed or deleted; its machine unregistered, moved to
  another vault or deleted: migration ``agents.0009``). Each cached answer carries the
  counter's value it was read with, and is trusted (up to ``TOKEN_KEEP_SECONDS``) only
  while the counter, read at most ``GENERATION_FRESH_SECONDS`` ago, is still that value:
  a change made anywhere is refused by every portal process within that bound (the
  process that revokes a token forgets it at once). While the counter cannot be read, an
  answer is trusted ``TOKEN_CACHE_SECONDS`` as before. A heart-beat verifies a token once
  a minute, so with a cache that outlives the minute every steady request is a hit. A
  refusal is never cached.
- The tokens' ``last_used_at`` is kept to the minute as ``machine_from_request`` keeps
  it: by the query of a miss, and for hits by a write in the background.
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
from django.db import DatabaseError, connection
from django.utils import timezone

from agents.api_auth import LAST_USED_RESOLUTION_SECONDS, TOKEN_PREFIX, token_hash
from portal.pools import (
    LoopBatches,
    ProcessThreadPool,
    cache_key,
    db_in_executor,
    loop_redis,
)

log = logging.getLogger(__name__)

# An answer read with the counter's current value is trusted this long (a heart-beat a
# minute finds it); without a counter read lately, this short while (the old bound).
TOKEN_KEEP_SECONDS = 600.0
TOKEN_CACHE_SECONDS = 5.0
TOKEN_CACHE_ENTRIES = 20_000
# The counter is read again in the background once its last read is this old; a request
# waits for a read when the last is older than the bound.
GENERATION_POLL_SECONDS = 0.5
GENERATION_FRESH_SECONDS = 2.0
GENERATION_TABLE = "agents_token_generation"  # agents/migrations/0009_token_generation.py
RATE_SCOPE = "agent-api-rate"  # agents.api_auth._rate_limited's scope
RATE_KEY_SECONDS = 120
RATE_SYNC_SECONDS = 0.2
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


@dataclass(frozen=True)
class LiveMachine:
    machine_id: uuid.UUID
    vault_id: uuid.UUID | None


@dataclass
class _Entry:
    machine: LiveMachine
    loaded_at: float  # monotonic
    generation: int  # the counter's value in the snapshot the answer was read from
    used_at: float  # time.time() of the last use written to last_used_at (or known there)


class _Generation:
    """The counter's value as last read, and when that read began (monotonic)."""

    def __init__(self) -> None:
        self.value: int | None = None
        self.read_at = float("-inf")
        self.task: asyncio.Task | None = None

    def fresh(self, now: float) -> bool:
        return now - self.read_at < GENERATION_FRESH_SECONDS

    def poll(self) -> asyncio.Task | None:
        """Read the counter again, in the background, once its last read is
        ``GENERATION_POLL_SECONDS`` old; the read under way, or None (the last is recent)."""
        if time.monotonic() - self.read_at < GENERATION_POLL_SECONDS:
            return None
        loop = asyncio.get_running_loop()
        task = self.task
        if task is None or task.done() or task.get_loop() is not loop:
            task = self.task = loop.create_task(self._read())
        return task

    async def confirm(self, *, wait: bool) -> None:
        """``poll``, and past the bound wait for the read if ``wait`` (a read that fails
        leaves the value unconfirmed: the short bound applies)."""
        task = self.poll()
        if task is not None and wait and not self.fresh(time.monotonic()):
            await asyncio.shield(task)

    async def _read(self) -> None:
        began = time.monotonic()
        try:
            value = await _read_generation_async()
        except DB_ERRORS as exc:
            log.info("token generation not read: %s: %s", type(exc).__name__, exc)
            return
        if began <= self.read_at:
            return
        changed = self.value is not None and value != self.value
        self.value, self.read_at = value, began
        if changed:  # a token may have died: every answer read before goes
            _tokens.clear()
            warm()

    def reset(self) -> None:
        self.value, self.read_at, self.task = None, float("-inf"), None


class _TokenCache:
    """``token hash -> _Entry``; the oldest half goes when full."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        # The loop that loaded them all; None: not loaded (again).
        self.warmed: asyncio.AbstractEventLoop | None = None

    def get(self, digest: str) -> _Entry | None:
        found = self.entries.get(digest)
        if found is None:
            return None
        now = time.monotonic()
        age = now - found.loaded_at
        known = _generation.value
        if known is None or found.generation >= known:
            if age < TOKEN_KEEP_SECONDS and known is not None and _generation.fresh(now):
                return found
            if age < TOKEN_CACHE_SECONDS:
                return found
        self.entries.pop(digest, None)
        return None

    def put(self, digest: str, entry: _Entry) -> None:
        if len(self.entries) >= TOKEN_CACHE_ENTRIES:
            for key in list(self.entries)[: TOKEN_CACHE_ENTRIES // 2]:  # insertion order
                del self.entries[key]
        self.entries[digest] = entry

    def clear(self) -> None:
        self.entries.clear()
        self.warmed = None


_tokens = _TokenCache()
_generation = _Generation()


def forget_tokens() -> None:
    """Drop every cached answer: the process that revokes a token (at its commit), and
    tests. The others see the database's counter move."""
    _tokens.clear()
    _generation.reset()


def _bearer(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        return None
    return token


def _generation_column() -> str:
    return f"(SELECT value FROM {connection.ops.quote_name(GENERATION_TABLE)} WHERE id = 1)"


def load_machines(digests: list[str]) -> list[tuple[LiveMachine, int] | None]:
    """The database's answer for each token hash of ``digests`` (``agents.api_auth.
    _live_token``'s rule) with the token counter's value it was read with, in one query,
    and the tokens' ``last_used_at`` kept to the minute as ``machine_from_request`` does
    (written for those due). Plain SQL: the ORM's query compilation cost more than the
    query. On PostgreSQL both are one statement (the write a CTE of the read): a fleet's
    burst of starts waits for each batch of its tokens, and a second round trip was a
    second wait for the interpreter on a busy process."""
    from agents.models import Machine, MachineToken

    quote = connection.ops.quote_name
    tokens, machines = quote(MachineToken._meta.db_table), quote(Machine._meta.db_table)
    field = MachineToken._meta.get_field
    pk_column, used = quote(field("id").column), quote(field("last_used_at").column)
    wanted = sorted(set(digests))
    # The counter in the same statement as the tokens: one snapshot for both.
    found = (
        f"SELECT t.token_hash, t.id, t.machine_id, m.vault_id, t.last_used_at, "
        f"{_generation_column()} AS generation FROM {tokens} t "
        f"JOIN {machines} m ON m.id = t.machine_id "
        f"WHERE t.token_hash IN ({', '.join(['%s'] * len(wanted))}) "
        "AND t.revoked_at IS NULL AND m.unregistered_at IS NULL"
    )
    if connection.vendor == "postgresql":
        now = timezone.now()
        at = field("last_used_at").get_db_prep_value(now, connection)
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
                "SELECT token_hash, machine_id, vault_id, generation FROM found",
                [*wanted, at, due_before],
            )
            rows = cursor.fetchall()
        return _answers(digests, rows)
    with connection.cursor() as cursor:
        cursor.execute(found, wanted)
        rows = cursor.fetchall()
    if rows:  # the last uses that are due, as a hit's are written
        note_used([row[0] for row in rows])
    return _answers(digests, [(digest, m, v, g) for digest, _, m, v, _, g in rows])


def _answers(digests: list[str], rows: list[tuple]) -> list[tuple[LiveMachine, int] | None]:
    """``rows`` of (token hash, machine id, vault id, counter) as the answer for each of
    ``digests``."""
    found = {
        digest: (LiveMachine(machine_id=_uuid(machine_id), vault_id=_uuid(vault_id)), generation)
        for digest, machine_id, vault_id, generation in rows
    }
    return [found.get(digest) for digest in digests]


def load_every_machine() -> list[tuple[str, LiveMachine, int, float]]:
    """Every live token (the most recently used first, at most ``TOKEN_CACHE_ENTRIES``):
    (hash, machine, the counter's value, its last use as ``time.time()``), in one
    statement."""
    from agents.models import Machine, MachineToken

    quote = connection.ops.quote_name
    tokens, machines = quote(MachineToken._meta.db_table), quote(Machine._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT t.token_hash, t.machine_id, m.vault_id, t.last_used_at, "
            f"{_generation_column()} FROM {tokens} t JOIN {machines} m ON m.id = t.machine_id "
            "WHERE t.revoked_at IS NULL AND m.unregistered_at IS NULL "
            "ORDER BY t.last_used_at DESC NULLS LAST LIMIT %s",
            [TOKEN_CACHE_ENTRIES],
        )
        rows = cursor.fetchall()
    return [
        (
            digest,
            LiveMachine(machine_id=_uuid(machine_id), vault_id=_uuid(vault_id)),
            generation,
            0.0 if last_used_at is None else _aware(last_used_at).timestamp(),
        )
        for digest, machine_id, vault_id, last_used_at, generation in rows
    ]


def read_generation() -> int:
    """The token counter (``GENERATION_TABLE``)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT value FROM {connection.ops.quote_name(GENERATION_TABLE)}")
        row = cursor.fetchone()
    return int(row[0])


def note_used(digests: list[str]) -> None:
    """``last_used_at`` of these tokens (those not written within the minute), as a miss's
    query writes it, for the tokens answered from the cache."""
    from agents.models import MachineToken

    quote = connection.ops.quote_name
    tokens = quote(MachineToken._meta.db_table)
    field = MachineToken._meta.get_field
    pk_column, used = quote(field("id").column), quote(field("last_used_at").column)
    now = timezone.now()
    due_before = field("last_used_at").get_db_prep_value(
        now - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS), connection
    )
    # In id order, skipping a row another writer holds (never a wait, never a deadlock).
    lock = " ORDER BY {0} FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {tokens} SET {used} = %s WHERE {pk_column} IN (SELECT {pk_column} FROM "
            f"{tokens} WHERE token_hash IN ({', '.join(['%s'] * len(digests))}) "
            f"AND ({used} IS NULL OR {used} < %s){lock.format(pk_column)})",
            [field("last_used_at").get_db_prep_value(now, connection), *digests, due_before],
        )


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
# own (a token is a miss the first time a process sees it, and after a change).
TOKEN_BATCH_MAX = 500
TOKEN_THREADS = 2
_token_threads = ProcessThreadPool(max_workers=TOKEN_THREADS, thread_name_prefix="haven-tokens")
_load = LoopBatches(
    db_in_executor(load_machines, _token_threads), TOKEN_BATCH_MAX, parallel=TOKEN_THREADS
)
# The counter's reads, loading every token and the hits' last uses, on two threads of
# their own: never queued behind the misses, nor they behind these.
_background_thread = ProcessThreadPool(max_workers=2, thread_name_prefix="haven-tokens-bg")
_read_generation_async = db_in_executor(read_generation, _background_thread)
_load_every_machine_async = db_in_executor(load_every_machine, _background_thread)
_note_used_async = db_in_executor(note_used, _background_thread)
DB_ERRORS = (DatabaseError,)  # a pool with nothing free in time included (Django wraps it)
NOTE_USED_SECONDS = 1.0  # the hits' last uses are written together this often


def _hold_every_machine(rows: list[tuple[str, LiveMachine, int, float]], began: float) -> None:
    """``load_every_machine``'s rows into the cache, read at ``began`` (monotonic)."""
    for digest, machine, generation, used_at in rows:
        held = _tokens.entries.get(digest)
        if held is None or held.generation < generation:  # else a miss's is as new
            _tokens.put(digest, _Entry(machine, began, generation, used_at))


def warm() -> None:
    """Load every live token into the cache, in the background (once per process and event
    loop, and again after the counter moved)."""
    loop = asyncio.get_running_loop()
    if _tokens.warmed is loop:
        return
    _tokens.warmed = loop

    async def load() -> None:
        began = time.monotonic()
        try:
            rows = await _load_every_machine_async()
        except Exception as exc:  # best effort: each token is loaded at its first use anyway
            log.info("live tokens not loaded: %s: %s", type(exc).__name__, exc)
            _tokens.warmed = None
            return
        _hold_every_machine(rows, began)

    _in_background(loop, load())


_background: set[asyncio.Task] = set()  # a reference keeps them from the GC until done


def _in_background(loop: asyncio.AbstractEventLoop, work) -> None:
    task = loop.create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


class _LastUses:
    """Tokens answered from the cache whose ``last_used_at`` is due, written together."""

    def __init__(self) -> None:
        self.due: set[str] = set()
        self.scheduled: asyncio.AbstractEventLoop | None = None

    def note(self, digest: str, entry: _Entry) -> None:
        now = time.time()
        if now - entry.used_at < LAST_USED_RESOLUTION_SECONDS:
            return
        entry.used_at = now
        self.due.add(digest)
        loop = asyncio.get_running_loop()
        if self.scheduled is not loop:
            self.scheduled = loop
            loop.call_later(NOTE_USED_SECONDS, lambda: _in_background(loop, self.write()))

    async def write(self) -> None:
        self.scheduled = None
        digests, self.due = sorted(self.due), set()
        if not digests:
            return
        try:
            await _note_used_async(digests)
        except DB_ERRORS as exc:  # the minute's use is noted by the next one
            log.info(
                "last use of %d tokens not written: %s: %s", len(digests), type(exc).__name__, exc
            )


_last_uses = _LastUses()


def held_machine(authorization: str) -> LiveMachine | None:
    """The machine of a live bearer token in an ``Authorization`` header when the cache
    holds its answer and may trust it without waiting (the counter read lately), at once:
    ``portal.gate`` lets such a request's body in within the step its headers came in.
    None: ask ``live_machine``."""
    token = _bearer(authorization)
    if token is None:
        return None
    digest = token_hash(token)
    warm()
    _generation.poll()
    if not _generation.fresh(time.monotonic()) and digest in _tokens.entries:
        return None  # live_machine waits for the counter
    entry = _tokens.get(digest)
    if entry is None:
        return None
    _last_uses.note(digest, entry)
    return entry.machine


async def live_machine(authorization: str) -> LiveMachine | None:
    """The machine of a live bearer token in an ``Authorization`` header, or None."""
    held = held_machine(authorization)
    if held is not None:
        return held
    token = _bearer(authorization)
    if token is None:
        return None
    digest = token_hash(token)
    # Only an answer held here needs the counter confirmed (a miss reads it with the token).
    await _generation.confirm(wait=digest in _tokens.entries)
    entry = _tokens.get(digest)
    if entry is not None:
        _last_uses.note(digest, entry)
        return entry.machine
    loaded = await _load(digest)
    if loaded is None:
        return None
    machine, generation = loaded
    _tokens.put(digest, _Entry(machine, time.monotonic(), generation, time.time()))
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
