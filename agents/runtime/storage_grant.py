"""This machine's storage grant: opening the store it grants, and renewing it before (or
once) it expires.

The portal issues each machine a short-lived grant to its own container
(``POST /api/agent/grant/``); the agent keeps it in ``registration.json``, where tasks read it.
The heartbeat renews it ahead of time; ``haven-agent check`` and the recovery commands renew
one that has already expired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.runtime import config, throttling
from agents.runtime.blobstore import RetryingStore, ThrottledStore, open_grant
from agents.runtime.blobstore.base import BlobStore, InvalidGrant
from agents.runtime.blobstore.grants import grant_expiry

log = logging.getLogger("haven.agent")

# A grant this close to its expiry, by this machine's clock, counts as expired: a clock up to
# this far behind the storage's would otherwise keep a grant the storage already refuses
# (the portal backdates an Azure grant's start by as much, for a clock that is ahead).
CLOCK_MARGIN = timedelta(minutes=15)


def time_left(grant: dict, *, now: datetime | None = None) -> timedelta:
    """How long ``grant`` stays valid (zero for a grant that cannot be read)."""
    if not grant:
        return timedelta(0)
    try:
        return grant_expiry(grant) - (now or datetime.now(UTC))
    except InvalidGrant:
        return timedelta(0)


def renew_grant(
    registration: config.Registration,
    portal,
    *,
    within: timedelta = timedelta(0),
    save: bool = True,
    now: datetime | None = None,
) -> bool:
    """Ask ``portal`` for a fresh grant when less than ``within`` is left of the saved one
    (zero: once it has expired, or is within ``CLOCK_MARGIN`` of it); returns whether it was
    renewed. The portal's failures (``PortalError``) are the caller's to handle."""
    if time_left(registration.grant, now=now) > max(within, CLOCK_MARGIN):
        return False
    answer = portal.post("grant/", {"vault_id": registration.vault_id})
    if not isinstance(answer.get("grant"), dict):
        return False
    registration.grant = answer["grant"]
    if save:
        config.save_registration(registration)
    log.info("storage grant renewed until %s", registration.grant.get("expires_at"))
    return True


def open_store(
    grant: dict[str, Any],
    *,
    proxies: dict[str, str] | None = None,
    attempts: int = 2,
    bandwidth_limit: int = 0,
) -> BlobStore:
    """The vault storage a grant opens (retrying transient failures briefly), throttled to
    ``bandwidth_limit`` bytes per second each way when one is set (settings.json)."""
    store: BlobStore = RetryingStore(
        open_grant(grant, proxies=proxies), attempts=attempts, base_delay=0.5
    )
    if bandwidth_limit:
        store = ThrottledStore(
            store,
            upload_bytes_per_second=bandwidth_limit,
            download_bytes_per_second=bandwidth_limit,
        )
    return store


def open_with_settings(
    grant: dict[str, Any],
    settings: config.Settings,
    *,
    now: Callable[[], datetime] = datetime.now,
) -> BlobStore:
    """``open_store`` through this machine's proxy and bandwidth limit: the throttling
    schedule of the applied policy when it has one on (with the local limit of settings.json
    as its ceiling), else the local limit alone. Backups and restores both open here;
    ``now`` is the machine's local clock the schedule follows."""
    schedule = throttling.applied_schedule(config.config_dir(), config.POLICY_FILE)
    if schedule is None:
        return open_store(
            grant, proxies=settings.proxies(), bandwidth_limit=settings.bandwidth_limit
        )
    return throttling.ScheduledStore(
        open_store(grant, proxies=settings.proxies()),
        schedule,
        ceiling=settings.bandwidth_limit,
        now=now,
    )
