"""``haven-agent check`` (the reference's "Verify internet access") and the cache check.

Each check returns a ``CheckResult``: a name, pass or fail, what was found, and when it
fails a hint a person can act on. The checks never raise.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from agents.runtime.blobstore.base import BlobForbidden, BlobStore, StorageError
from agents.runtime.config import Registration, Settings
from agents.runtime.portal_api import PortalClient, PortalError, PortalRefused
from agents.runtime.sizes import size_text
from agents.runtime.storage_grant import open_store

#: ``open_store`` or a test's stand-in: ``opener(grant, proxies=...)`` gives the store.
StoreOpener = Callable[..., BlobStore]

MAX_CLOCK_SKEW_SECONDS = 300
CACHE_FRACTION = 0.05  # the reference: cache free space at least 5% of the data backed up


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"[{'PASS' if self.ok else 'FAIL'}] {self.name}: {self.detail}"
        if not self.ok and self.hint:
            text += f"\n       hint: {self.hint}"
        return text


class CacheTooSmall(Exception):
    """The cache location has less free space than 5% of the data to back up."""


def cache_space_required(data_bytes: int) -> int:
    return int(data_bytes * CACHE_FRACTION + 0.999999)


def check_cache_space(
    cache_dir: str | os.PathLike[str], data_bytes: int, *, minimum: int = 0
) -> int:
    """Before a backup: raise ``CacheTooSmall`` unless the cache location has free space of
    at least 5% of ``data_bytes`` (and at least ``minimum``, the portal's floor). Returns the
    free bytes. Creates the directory (0700)."""
    path = Path(cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        free = shutil.disk_usage(path).free
    except OSError as exc:
        raise CacheTooSmall(
            f"the cache location {path} cannot be used ({exc.strerror}); choose another "
            "with haven-agent configure --cache-dir DIR"
        ) from None
    share = cache_space_required(data_bytes)
    needed = max(share, minimum)
    if free < needed:
        why = (
            f"backing up {size_text(data_bytes)} needs at least {size_text(needed)} (5% of the data)"
            if share >= minimum
            else f"a backup needs at least {size_text(needed)} there"
        )
        raise CacheTooSmall(
            f"the cache location {path} has {size_text(free)} free, but {why}. Free some "
            "space there, or move the cache to a larger disk with "
            "haven-agent configure --cache-dir DIR, then run the backup again."
        )
    return free


def check_portal(
    client: PortalClient, expected_fingerprint: str = ""
) -> tuple[CheckResult, dict[str, Any]]:
    name = "portal API"
    try:
        identity = client.identity()
    except PortalError as exc:
        return (
            CheckResult(
                name,
                False,
                str(exc),
                "Check the portal URL, that the portal runs, and firewall/proxy settings "
                "(haven-agent configure --proxy URL). The machine needs HTTPS access to the "
                "portal.",
            ),
            {},
        )
    fingerprint = str(identity.get("fingerprint", ""))
    if expected_fingerprint and fingerprint != expected_fingerprint:
        return (
            CheckResult(
                name,
                False,
                f"{client.base_url} presents signing key {fingerprint}, not {expected_fingerprint}",
                "The portal's identity changed (reinstalled?) or another server answers at this "
                "address. Check the address; if the portal was reinstalled, register again.",
            ),
            identity,
        )
    return (
        CheckResult(
            name,
            True,
            f"{client.base_url} answers (portal version {identity.get('version', '?')}, key "
            f"{fingerprint})",
        ),
        identity,
    )


def check_token(client: PortalClient) -> CheckResult:
    name = "machine registration"
    try:
        client.post("heartbeat/", {"check": True})
    except PortalRefused as exc:
        return CheckResult(
            name,
            False,
            str(exc),
            "The portal does not accept this machine's token: it was unregistered or "
            "replaced. Register again with haven-agent register --vault-credentials FILE.",
        )
    except PortalError as exc:
        return CheckResult(name, False, str(exc), "Fix the portal check above first.")
    return CheckResult(name, True, "the portal accepts this machine's token")


def check_clock(identity: dict[str, Any], now: datetime | None = None) -> CheckResult:
    name = "clock"
    raw = identity.get("time")
    if not raw:
        return CheckResult(name, False, "the portal's time is unknown", "Fix the portal check.")
    try:
        portal_time = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return CheckResult(name, False, f"the portal sent an unreadable time {raw!r}")
    local = now or datetime.now(UTC)
    skew = (local - portal_time).total_seconds()
    if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
        direction = "ahead of" if skew > 0 else "behind"
        return CheckResult(
            name,
            False,
            f"this machine's clock is {abs(skew):.0f} s {direction} the portal's",
            "Storage grants and signed tasks are time-limited: synchronise the clock "
            "(timedatectl set-ntp true, or install chrony/ntp).",
        )
    return CheckResult(name, True, f"within {abs(skew):.1f} s of the portal's")


def check_broker(registration: Registration, timeout: float = 5.0) -> CheckResult:
    name = "broker"
    url = registration.broker_url
    if url.startswith("filesystem://"):
        folders = [
            registration.broker_transport_options.get(key, "")
            for key in ("data_folder_in", "control_folder")
        ]
        missing = [f for f in folders if not f or not os.access(f, os.W_OK)]
        if missing:
            return CheckResult(
                name,
                False,
                f"the portal's embedded broker folder {missing[0] or '(none)'} is not writable here",
                "The embedded broker works only on the portal's own host: run the agent there "
                "as a user that can write the folder, or configure REDIS_URL on the portal.",
            )
        return CheckResult(name, True, f"embedded broker folder {folders[0]} is writable")
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    where = url.split("@")[-1]
    try:
        client.ping()
        client.llen(registration.queue)
    except redis.exceptions.AuthenticationError:
        return CheckResult(
            name,
            False,
            f"the broker at {where} refused this machine's broker user",
            "The machine was unregistered or replaced in the portal (its broker user is "
            "gone). Register again.",
        )
    except redis.exceptions.NoPermissionError as exc:
        return CheckResult(
            name,
            False,
            f"the broker at {where} denied access to {registration.queue}: {exc}",
            "The broker's access rules for this machine are missing; register again.",
        )
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        return CheckResult(
            name,
            False,
            f"cannot reach the broker at {where}: {exc}",
            "The machine needs a TCP connection to the portal's Redis (port 6379 unless "
            "configured otherwise): check firewalls and that Redis listens on an address "
            "this machine can reach.",
        )
    finally:
        client.close()
    return CheckResult(name, True, f"{where} accepts this machine's broker user")


def check_storage(
    registration: Registration, settings: Settings, store_opener: StoreOpener | None = None
) -> CheckResult:
    name = "storage"
    opener = store_opener or open_store
    try:
        store = opener(registration.grant, proxies=settings.proxies())
        try:
            store.exists("config")
        finally:
            store.close()
    except BlobForbidden as exc:
        return CheckResult(
            name,
            False,
            f"storage refused this machine's grant: {exc}",
            "The grant expired or was revoked; run haven-agent check again (it renews an "
            "expired grant) or register again if the machine was unregistered.",
        )
    except StorageError as exc:
        return CheckResult(
            name,
            False,
            f"cannot reach the vault's storage: {exc}",
            "The machine needs HTTPS access to the storage endpoint named in its grant "
            "(Azure Blob or the portal's /storage/); check firewall and proxy settings.",
        )
    return CheckResult(
        name, True, f"container {registration.container or '?'} is reachable with the grant"
    )


def check_cache(settings: Settings) -> CheckResult:
    path = settings.cache_path
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        free = shutil.disk_usage(path).free
        writable = os.access(path, os.W_OK)
    except OSError as exc:
        writable, free = False, 0
        detail = f"{path}: {exc.strerror}"
    else:
        detail = f"{path} has {size_text(free)} free"
    if not writable:
        return CheckResult(
            "cache location",
            False,
            detail if free else f"{path} is not writable",
            "Choose a writable cache location: haven-agent configure --cache-dir DIR.",
        )
    return CheckResult(
        "cache location",
        True,
        detail + f" (enough for backing up {size_text(int(free / CACHE_FRACTION))})",
    )
