"""The jobs app's tunables, read from Django settings with defaults.

``portal/settings.py`` sets them from the environment (docs/jobs.md lists the variables);
until it does, these defaults apply.
"""

from __future__ import annotations

from django.conf import settings

DEFAULTS = {
    # A job the agent has not picked up after this long shows "Waiting for agent".
    "HAVEN_JOB_PICKUP_SECONDS": 60,
    # ... and fails with that reason after this long (HAVEN_JOB_AGENT_WAIT_MINUTES).
    "HAVEN_JOB_AGENT_WAIT_MINUTES": 60,
    # A running job whose agent has said nothing for this long failed (agent died).
    "HAVEN_JOB_STALL_SECONDS": 120,
    # A machine with no successful backup for this many days raises a Warning alert.
    "HAVEN_ALERT_NO_BACKUP_DAYS": 3,
    # "each" (an email per alert), "digest" (hourly), or "off".
    "HAVEN_ALERT_EMAIL": "each",
    # Unreferenced packs younger than this are left alone (a backup may be writing them).
    "HAVEN_GC_GRACE_HOURS": 24,
    # Free space the agent's cache needs before a backup starts (sent to the agent).
    "HAVEN_AGENT_MIN_CACHE_FREE_MB": 256,
    # Without a heartbeat for this long a machine counts as offline.
    "HAVEN_AGENT_OFFLINE_SECONDS": 180,
}


def get(name: str):
    return getattr(settings, name, DEFAULTS[name])
