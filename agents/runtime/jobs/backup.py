"""The backup job: what ``haven.agent.backup`` does inside the runner (``jobs.runner``).

Fetch the policy from the portal's job, check the cache, open the repository, run the engine,
and say what it made: the recovery point, its manifest and the packs it references.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.runtime import checks, engine, protocol, sysstate
from agents.runtime.blobstore.base import BlobStore
from agents.runtime.engine import layout
from agents.runtime.jobs.outbox import Outbox, outbox_for_cache
from agents.runtime.jobs.runner import JobAborted, JobRun, passphrase_text, run_job
from agents.runtime.protocol import JobResult

# With a bandwidth limit, packs hold about a second of upload: the engine waits for a
# pack's upload before it reads on, so big packs on a slow link would freeze the progress
# and delay a cancel by the time one pack takes (16 MiB at 256 KB/s: a minute).
MIN_THROTTLED_PACK = 1 << 20
MAX_PACK = 16 << 20
WRONG_PASSPHRASE = (
    "The encryption passphrase configured on this machine does not open the vault's backup data"
)
CANCELLED = "Cancelled on request; no recovery point was made."
SYSTEM_STATE_STAGING = "system-state"  # in the cache: the collection, kept between backups


def check_cache(cache_dir: Path, data_bytes: int, *, minimum: int) -> None:
    """The cache location's free space: 5% of the data to back up (``data_bytes``, from the
    previous recovery point, or for a first backup the running count beside its walk) and
    never less than the portal's
    ``minimum``. A job that would fill the disk fails before it reads a file."""
    try:
        checks.check_cache_space(cache_dir, data_bytes, minimum=minimum)
    except checks.CacheTooSmall as exc:
        text = str(exc)
        raise JobAborted(text[:1].upper() + text[1:]) from None


def system_state(
    policy: dict, cache_dir: Path
) -> tuple[dict | None, Callable[[], list[dict]] | None]:
    """With System State in the policy, start collecting it into the cache's staging folder
    (on a thread: it overlaps the key derivation and the files' backup; the walk waits for
    it before the staged folder): the engine's mapping (stored prefix -> that folder) and
    the wait, which gives the collection's warnings. Without it, nothing (and an earlier
    collection's folder is removed)."""
    staging = cache_dir / SYSTEM_STATE_STAGING
    if not policy.get(protocol.POLICY_SYSTEM_STATE):
        shutil.rmtree(staging, ignore_errors=True)  # it holds /etc's secrets: none left over
        return None, None
    warnings: list[dict] = []

    def collect() -> None:
        try:
            warnings.extend(sysstate.collect(staging).warnings)
        except OSError as exc:  # the staging folder itself (a full or read-only cache disk)
            warnings.append({"path": "System State", "reason": (
                f"not collected: the staging folder {staging} could not be written "
                f"({exc.strerror or exc}); this recovery point holds no System State")})  # fmt: skip

    worker = threading.Thread(target=collect, daemon=True, name="haven-system-state")
    worker.start()

    def ready() -> list[dict]:
        worker.join()
        return warnings

    return {protocol.SYSTEM_STATE_PATH: staging}, ready


def pack_size_for(bandwidth_limit: int) -> int | None:
    """The pack size for a bandwidth limit (bytes per second); None: the engine's default."""
    if not bandwidth_limit:
        return None
    return max(MIN_THROTTLED_PACK, min(MAX_PACK, int(bandwidth_limit)))


def backup_work(
    *,
    open_store: Callable[[], BlobStore],
    passphrase: Callable[[], str] | str,
    cache_dir: Path,
    pack_size: int | None = None,
) -> Callable[[JobRun], JobResult]:
    """The backup's work for ``run_job``."""

    def work(run: JobRun) -> JobResult:
        job = run.job
        policy = (job.get("policy") or {}).get("spec")
        if policy and policy.get(protocol.POLICY_PROTECTION) == protocol.PROTECTION_STOPPED:
            raise JobAborted(
                "Protection of this machine is stopped in the portal: it runs no backups "
                "until someone chooses Resume backup there."
            )
        if not policy or not policy.get("items"):
            raise JobAborted(
                "This machine has no backup policy with items to back up; set one in the "
                "portal (Backup policy) and back up again."
            )
        minimum = int(job.get("min_cache_free_bytes") or 0)
        check_cache(Path(cache_dir), 0, minimum=minimum)
        options: dict[str, Any] = {"pack_size": pack_size} if pack_size else {}
        store = open_store()
        secret = passphrase_text(passphrase)
        mapped, collected = system_state(policy, Path(cache_dir))
        # the walk starts while the passphrase's key is derived
        walk = engine.WalkAhead(
            policy["items"],
            [*policy.get("exclude_globs", []), *policy.get("exclude_types", [])],
            mapped=mapped,
            mapped_ready=collected,
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
            sink=run.sink,
            cancel=run.cancel,
            tags=job.get("tags") or [],
            check_space=lambda data_bytes: check_cache(
                Path(cache_dir), data_bytes, minimum=minimum
            ),
            **options,
        )
        run.sink.close()  # its last post carries the final counters; warnings are complete
        return backup_result(result, sink_warnings=run.sink.warnings, seen=run.sink.warning_count)

    return work


def backup_result(
    result: engine.BackupResult, *, sink_warnings: list[dict], seen: int
) -> JobResult:
    """The engine's ``BackupResult`` as the job's result."""
    status = protocol.job_status_of(result.status)
    cancelled = status == protocol.JobStatus.CANCELLED
    warnings = list(result.warnings) or sink_warnings
    made = result.recovery_point if not cancelled else None
    return JobResult(
        status=status,
        message=CANCELLED if cancelled else (result.message or ""),
        warnings=warnings,
        warning_count=max(len(warnings), seen),
        stats={
            "files": result.files,
            "logical_bytes": result.logical_bytes,
            "new_bytes": result.new_bytes,
            "added_bytes": result.added_bytes,
            "referenced_bytes": result.stored_bytes,
        },
        recovery_point_id=made,
        manifest_blob=layout.manifest_blob(made) if made else "",
        pack_ids=list(result.packs) if made else [],
    )


def run_backup_job(
    job_id: str,
    *,
    portal,
    open_store: Callable[[], BlobStore],
    passphrase: Callable[[], str] | str,
    cache_dir: Path,
    max_per_second: float = 1.0,
    heartbeat: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    pack_size: int | None = None,
    outbox: Outbox | None = None,
) -> dict:
    """Run the portal's backup job ``job_id`` and report on it; returns the posted result.

    ``portal`` is a ``PortalClient`` (``get``/``post`` on ``/api/agent/``), ``open_store``
    gives the machine's ``BlobStore``; ``pack_size`` overrides the engine's (``pack_size_for``
    a bandwidth limit); the result waits in ``outbox`` (the cache's by default) until the
    portal has it.
    """
    return run_job(
        job_id,
        backup_work(
            open_store=open_store, passphrase=passphrase, cache_dir=cache_dir, pack_size=pack_size
        ),
        portal=portal,
        outbox=outbox if outbox is not None else outbox_for_cache(Path(cache_dir)),
        kind="backup",
        wrong_passphrase=WRONG_PASSPHRASE,
        max_per_second=max_per_second,
        heartbeat=heartbeat,
        sleep=sleep,
    )
