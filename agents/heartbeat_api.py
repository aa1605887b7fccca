"""A machine's heart-beat, answered on the server's event loop (``portal.hotpath``).

Every machine posts ``/api/agent/heartbeat/`` once a minute: 2,000 machines are 33 a
second. The common case — a machine that is online and stays so — is one UPDATE (its
``last_seen_at``, and the version and names it reports, as ``machine_heartbeat`` writes
them), with no read first: the UPDATE itself only matches a registered machine seen within
``OFFLINE_AFTER``. Anything else returns None and Django's view answers it as before: a
machine coming back online (its pages are told), a body naming another vault, a
malformed body, a machine over its rate limit.
"""

from __future__ import annotations

from django.db import connection
from django.utils import timezone

from agents.api_auth import RATE_LIMIT_PER_MINUTE, json_object
from agents.live_auth import LiveMachine, rate_count
from agents.models import OFFLINE_AFTER, Machine
from agents.runtime.protocol import MAX_AGENT_API_BODY
from agents.runtime.version import __version__
from portal.pools import db_in_executor

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


_beat = db_in_executor(beat)


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
        if not await _beat(machine.machine_id, reported, now):
            return None
    return {
        "machine_id": str(machine.machine_id),
        "time": now.isoformat(),
        "agent_version": __version__,
    }
