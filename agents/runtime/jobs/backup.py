"""Running one backup job for the portal: ``run_backup_job``."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agents.runtime.jobs.sink import PortalSink

log = logging.getLogger("haven.agent.jobs")

ACTIVE = ("queued", "waiting", "running")
ENGINE_STATUS = {
    "completed": "completed",
    "completed_with_warnings": "warning",
    "cancelled": "cancelled",
}
RESULT_ATTEMPTS = 5
# With a bandwidth limit, packs hold about a second of upload: the engine waits for a
# pack's upload before it reads on, so big packs on a slow link would freeze the progress
# and delay a cancel by the time one pack takes (16 MiB at 256 KB/s: a minute).
MIN_THROTTLED_PACK = 1 << 20
MAX_PACK = 16 << 20

# Jobs running in this process, so a ``haven.agent.cancel`` task can reach them.
RUNNING: dict[str, threading.Event] = {}


class JobAborted(Exception):
    """The job cannot run; the message says why, for the person reading the job page."""


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:,.0f} MB"


def check_cache(cache_dir: Path, needed: int) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache_dir).free
    if free < needed:
        raise JobAborted(
            f"Only {_mb(free)} are free where the agent keeps its cache ({cache_dir}); a "
            f"backup needs at least {_mb(needed)}. Free some space on that disk, or move the "
            "cache to a larger one with haven-agent configure --cache-dir."
        )


def pack_size_for(bandwidth_limit: int) -> int | None:
    """The pack size for a bandwidth limit (bytes per second); None: the engine's default."""
    if not bandwidth_limit:
        return None
    return max(MIN_THROTTLED_PACK, min(MAX_PACK, int(bandwidth_limit)))


def _post_result(portal, job_id: str, payload: dict, *, sleep=time.sleep) -> dict | None:
    """The result must arrive: retry a portal that is briefly away."""
    delay = 1.0
    for attempt in range(RESULT_ATTEMPTS):
        try:
            return portal.post(f"jobs/{job_id}/result/", payload)
        except Exception as exc:
            refused = getattr(exc, "status", None)
            if refused is not None and refused < 500:
                log.error("the portal refused the result of job %s: %s", job_id, exc)
                return None
            log.warning(
                "could not post the result of job %s (attempt %d): %s", job_id, attempt + 1, exc
            )
            sleep(delay)
            delay = min(delay * 2, 30)
    return None


def run_backup_job(
    job_id: str,
    *,
    portal,
    open_store: Callable[[], object],
    passphrase: Callable[[], str] | str,
    cache_dir: Path,
    engine=None,
    max_per_second: float = 1.0,
    heartbeat: float = 2.0,
    sleep=time.sleep,
    pack_size: int | None = None,
) -> dict:
    """Run the portal's backup job ``job_id`` and report on it; returns the posted result.

    ``portal`` is a ``PortalClient`` (``get``/``post`` on ``/api/agent/``), ``open_store``
    gives the vault's ``BlobStore``, ``engine`` defaults to ``agents.runtime.engine``;
    ``pack_size`` overrides the engine's (``pack_size_for`` a bandwidth limit).
    """
    if engine is None:
        from agents.runtime import engine
    job = portal.get(f"jobs/{job_id}/")
    if job.get("cancel") or job.get("status") not in ACTIVE:
        log.info("job %s is %s; nothing to do", job_id, job.get("status"))
        return {"status": "skipped"}
    started = portal.post(f"jobs/{job_id}/start/")
    if started.get("cancel") and started.get("status") not in ACTIVE:
        return {"status": "skipped"}

    cancel = threading.Event()
    if started.get("cancel"):
        cancel.set()
    RUNNING[job_id] = cancel
    sink = PortalSink(
        lambda event: portal.post(f"jobs/{job_id}/progress/", event),
        max_per_second=max_per_second,
        heartbeat=heartbeat,
        cancel=cancel,
    )
    payload: dict
    try:
        policy = (job.get("policy") or {}).get("spec")
        if not policy or not policy.get("items"):
            raise JobAborted(
                "This machine has no backup policy with items to back up; set one in the "
                "portal (Backup policy) and back up again."
            )
        check_cache(Path(cache_dir), int(job.get("min_cache_free_bytes") or 0))
        sink.start()
        store = open_store()
        secret = passphrase() if callable(passphrase) else passphrase
        # the walk starts while the passphrase's key is derived
        walk = engine.WalkAhead(
            policy["items"],
            [*policy.get("exclude_globs", []), *policy.get("exclude_types", [])],
        )
        try:
            repo = engine.Repository.open(store, secret)
        except BaseException:
            walk.close()
            raise
        result = engine.run_backup(
            repo,
            walk=walk,
            cache_dir=Path(cache_dir),
            sink=sink,
            cancel=cancel,
            tags=job.get("tags") or [],
            **({"pack_size": pack_size} if pack_size else {}),
        )
        sink.close()
        status = ENGINE_STATUS.get(result.status, "failed")
        warnings = list(result.warnings) or sink.warnings
        payload = {
            "status": status,
            "error": "Cancelled on request; no recovery point was made."
            if status == "cancelled"
            else (result.message or ""),
            "warnings": warnings[:1000],
            "warning_count": max(len(warnings), sink.warning_count),
            "stats": {
                "files": result.files,
                "logical_bytes": result.logical_bytes,
                "new_bytes": result.new_bytes,
                "added_bytes": result.added_bytes,
                "referenced_bytes": result.stored_bytes,
            },
            "recovery_point_id": result.recovery_point if status != "cancelled" else None,
            "manifest_blob": f"snapshots/{result.recovery_point}" if result.recovery_point else "",
            "pack_ids": list(result.packs),
        }
    except JobAborted as exc:
        payload = {"status": "failed", "error": str(exc)}
    except Exception as exc:  # every engine/storage failure carries a message for people
        log.exception("backup job %s failed", job_id)
        payload = {"status": "failed", "error": _explain(exc)}
    finally:
        sink.close()
        RUNNING.pop(job_id, None)
    _post_result(portal, job_id, payload, sleep=sleep)
    return payload


def _explain(exc: Exception) -> str:
    name = exc.__class__.__name__
    text = str(exc) or name
    if name == "WrongPassphrase":
        return (
            f"The encryption passphrase configured on this machine does not open the vault's "
            f"backup data: {text}"
        )
    if isinstance(exc, OSError):
        return f"The agent could not read or write a file: {text}"
    if "Storage" in name or "Blob" in name or "Grant" in name:
        return f"The vault's storage could not be used: {text}"
    return text[0].upper() + text[1:] if text else name


def cancel_job(job_id: str) -> bool:
    """Stop a job running in this process; False when it is not running here."""
    event = RUNNING.get(job_id)
    if event is None:
        return False
    event.set()
    return True
