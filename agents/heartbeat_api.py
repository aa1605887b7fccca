"""A machine's heart-beat, answered on the server's event loop (``portal.hotpath``).

Every machine posts ``/api/agent/heartbeat/`` once a minute: 2,000 machines are 33 a
second. The common case — a machine that is online and stays so — is one UPDATE (its
``last_seen_at``, and the version and names it reports, as ``machine_heartbeat`` writes
them), with no read first: the UPDATE itself only matches a registered machine seen within
``OFFLINE_AFTER``. Anything else returns None and Django's view answers it as before: a
machine coming back online (its pages are told), a body naming another vault, a
malformed body, a machine over its rate limit.

The UPDATEs run on two threads of their own per process (``beat_many``), so a heart-beat
never queues behind the token checks, job loads and row writes on the loop's executor,
nor behind the starts; the heart-beats that arrive while both are writing go together
in the next batch, one statement on PostgreSQL. That statement takes the machines'
rows in the order of their ids and skips a row someone else holds (a start or a pack
deletion under the machine's fence): that heart-beat goes to the view, which waits its
turn. It never waits for a lock itself, so it cannot hold up a start nor deadlock with one.
"""

from __future__ import annotations

from datetime import datetime

from django.db import connection
from django.utils import timezone

from agents.api_auth import RATE_LIMIT_PER_MINUTE, json_object
from agents.live_auth import LiveMachine, rate_count
from agents.models import OFFLINE_AFTER, Machine
from agents.runtime.protocol import MAX_AGENT_API_BODY
from agents.runtime.version import __version__
from portal.pools import LoopBatches, ProcessThreadPool, db_in_executor

# What machine_heartbeat keeps of each reported field.
REPORTED = {"agent_version": 40, "hostname": 255, "os_name": 255}


def beat(machine_id, reported: dict[str, str], now) -> bool:
    """Record the heart-beat of a machine that is online; False (nothing written) when it
    is not (offline, or unregistered since its token was cached)."""
    meta = Machine._meta
    quote = connection.ops.quote_name
    fields = {"last_seen_at": now, **reported}
    columns = ", ".join(f"{quote(meta.get_field(name).column)} = %s" for name in fields)
    pk = meta.pk
    values = [
        meta.get_field(name).get_db_prep_save(value, connection) for name, value in fields.items()
    ]
    assert pk is not None
    values += [
        pk.get_db_prep_value(machine_id, connection),
        meta.get_field("last_seen_at").get_db_prep_value(now - OFFLINE_AFTER, connection),
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(meta.db_table)} SET {columns} WHERE {quote(pk.column)} = %s "
            "AND unregistered_at IS NULL AND last_seen_at > %s",
            values,
        )
        return cursor.rowcount == 1


# A batch holds at most this many heart-beats (the rest wait for the next).
BEAT_BATCH_MAX = 500


def beat_many(beats: list[tuple[object, dict[str, str], datetime]]) -> list[bool]:
    """``beat`` for each of ``beats`` (machine id, reported fields, time), in one
    statement on PostgreSQL; whether each was recorded. The rows are taken in the order
    of their ids and a row another transaction holds is skipped (``SKIP LOCKED``: that
    heart-beat is not recorded here), so this never waits for a lock."""
    if connection.vendor != "postgresql":
        return [beat(machine_id, reported, now) for machine_id, reported, now in beats]
    latest: dict[object, tuple[dict[str, str], datetime]] = {}
    for machine_id, reported, now in beats:  # a machine twice in a batch: its latest
        latest[machine_id] = (reported, now)
    ids = sorted(latest, key=str)
    meta = Machine._meta
    quote = connection.ops.quote_name
    table, pk = quote(meta.db_table), quote(meta.pk.column)  # type: ignore[union-attr]
    seen = quote(meta.get_field("last_seen_at").column)
    unregistered = quote(meta.get_field("unregistered_at").column)
    columns = {name: quote(meta.get_field(name).column) for name in REPORTED}
    sets = ", ".join(
        [f"{seen} = b.seen"]
        + [f"{col} = COALESCE(b.{name}, m.{col})" for name, col in columns.items()]
    )
    arrays = [
        [str(machine_id) for machine_id in ids],
        [latest[machine_id][1] for machine_id in ids],
        [latest[machine_id][1] - OFFLINE_AFTER for machine_id in ids],
    ] + [[latest[machine_id][0].get(name) for machine_id in ids] for name in REPORTED]
    casts = ", ".join(
        ["%s::uuid[]", "%s::timestamptz[]", "%s::timestamptz[]"] + ["%s::text[]"] * len(REPORTED)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH b(id, seen, since, {', '.join(REPORTED)}) AS (SELECT * FROM unnest({casts})), "
            f"locked AS (SELECT m.{pk} FROM {table} m JOIN b ON b.id = m.{pk} "
            f"WHERE m.{unregistered} IS NULL AND m.{seen} > b.since "
            f"ORDER BY m.{pk} FOR UPDATE OF m SKIP LOCKED) "
            f"UPDATE {table} m SET {sets} FROM b, locked "
            f"WHERE m.{pk} = locked.{pk} AND b.id = m.{pk} RETURNING m.{pk}",
            arrays,
        )
        recorded = {str(row[0]) for row in cursor.fetchall()}
    return [str(machine_id) in recorded for machine_id, _, _ in beats]


BEAT_THREADS = 2
_beat_threads = ProcessThreadPool(max_workers=BEAT_THREADS, thread_name_prefix="haven-heartbeat")
_beat_many = db_in_executor(beat_many, _beat_threads)


# The heart-beats that come while a batch is written go together in the next.
_beats = LoopBatches(_beat_many, BEAT_BATCH_MAX, parallel=BEAT_THREADS)


async def heartbeat(machine: LiveMachine, body: bytes) -> dict | None:
    """The answer to a steady heart-beat, or None: Django's view answers this one."""
    data = json_object(body, max_bytes=MAX_AGENT_API_BODY)
    if data is None:
        return None
    vault_id = data.get("vault_id")
    if vault_id and str(vault_id) != str(machine.vault_id):
        return None
    if rate_count(machine.machine_id) > RATE_LIMIT_PER_MINUTE:
        return None
    now = timezone.now()
    if not data.get("check"):
        reported = {
            name: str(data.get(name, ""))[:limit]
            for name, limit in REPORTED.items()
            if str(data.get(name, ""))
        }
        if not await _beats((machine.machine_id, reported, now)):
            return None
    return {
        "machine_id": str(machine.machine_id),
        "time": now.isoformat(),
        "agent_version": __version__,
    }
