"""The wire between the portal and its agents: everything both sides must agree on, once.

The agent (``agents.runtime``) and the portal (Django: ``jobs``, ``agents``) both import this
module; it imports nothing of either, so it can sit below every layer. A string that both
sides must spell the same way is defined here and nowhere else. The blob layout of a
repository is the engine's (``agents.runtime.engine.layout``); the message schemas are in
docs/jobs.md and docs/progress.md.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

# -- agent task names (the functions behind them: agents/runtime/tasks.py's REGISTRY) ---------
PING_TASK = "haven.agent.ping"
BACKUP_TASK = "haven.agent.backup"
CANCEL_TASK = "haven.agent.cancel"
POLICY_TASK = "haven.agent.policy"
RECOVERY_POINTS_TASK = "haven.agent.recovery.points"
BROWSE_TASK = "haven.agent.recovery.browse"
SEARCH_TASK = "haven.agent.recovery.search"
VERSIONS_TASK = "haven.agent.recovery.versions"
RESTORE_TASK = "haven.agent.recovery.restore"
DOWNLOAD_TASK = "haven.agent.recovery.download"
TASK_PREFIX = "haven.agent."

# A policy whose spec carries ``{POLICY_PROTECTION: PROTECTION_STOPPED}`` is a stopped one:
# protection of the machine was stopped in the portal, and the agent runs no backup of it
# (docs/protection.md). A protected machine's spec has no such key.
POLICY_PROTECTION = "protection"
PROTECTION_STOPPED = "stopped"

# System State (docs/system-state.md): a policy spec with ``{POLICY_SYSTEM_STATE: True}``
# has the agent collect the machine's configuration at the start of a backup; the collection is
# stored in the recovery point under the reserved relative path ``SYSTEM_STATE_PATH`` (every
# file's stored path is absolute, so it can never meet one), and Recover Data restores it
# by selecting that path.
POLICY_SYSTEM_STATE = "system_state"
SYSTEM_STATE_PATH = "system-state"
# The offline seed's staging folder named in the policy (docs/seeding.md): where the first
# backup of an Offline policy is written when ``haven-agent seed export`` gets no ``--to``.
POLICY_SEED_STAGING = "seed_staging"


# -- job statuses -------------------------------------------------------------------------------
class JobStatus(enum.StrEnum):
    """A job's status as the portal stores it and the agent reports it."""

    QUEUED = "queued"
    WAITING = "waiting"
    RUNNING = "running"
    COMPLETED = "completed"
    WARNING = "warning"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.WAITING, JobStatus.RUNNING)
FINISHED_STATUSES = (
    JobStatus.COMPLETED,
    JobStatus.WARNING,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)
# Not a job status: what an agent task returns (and never posts) when the portal's job had
# already ended or been cancelled before the agent picked it up.
SKIPPED = "skipped"

# The engine's result statuses (BackupResult, RestoreResult) as job statuses; anything else
# the engine could say is a failure.
ENGINE_STATUS: Mapping[str, JobStatus] = {
    "completed": JobStatus.COMPLETED,
    "completed_with_warnings": JobStatus.WARNING,
    "cancelled": JobStatus.CANCELLED,
}


def job_status_of(engine_status: str) -> JobStatus:
    return ENGINE_STATUS.get(engine_status, JobStatus.FAILED)


# -- restore -------------------------------------------------------------------------------------
# What a restore does with an item that already exists at the target.
CONFLICT_COPY = "copy"
CONFLICT_OVERWRITE = "overwrite"
CONFLICT_SKIP = "skip"
CONFLICT_CHOICES = (CONFLICT_COPY, CONFLICT_OVERWRITE, CONFLICT_SKIP)

# Which copy a recovery reads (the tasks' ``source_region``, the grant request's ``region``):
# the primary storage, or a geo-redundant vault's secondary copy (Cross Region Restore).
REGION_PRIMARY = "primary"
REGION_SECONDARY = "secondary"
REGIONS = (REGION_PRIMARY, REGION_SECONDARY)

# The ``code`` of a failed answer to a recovery question (the wizard words some of them).
ANSWER_ERROR = "error"
ANSWER_PASSPHRASE_NEEDED = "passphrase_needed"
ANSWER_WRONG_PASSPHRASE = "wrong_passphrase"
ANSWER_SOURCE_REFUSED = "source_refused"

# -- limits ---------------------------------------------------------------------------------------
DOWNLOAD_MAX_BYTES = 64 * 1024 * 1024  # a Download from the wizard; more is a restore
DOWNLOAD_MAX_FILES = 1000
MAX_WARNINGS = 1000  # per job: the agent sends at most this many, the portal keeps as many
# The largest request body each endpoint takes. The portal refuses a larger one (413) from
# its headers, before reading it (portal/gate.py); each view checks again while it reads.
MAX_AGENT_API_BODY = 256 * 1024  # /api/agent/: register, heartbeat, grant, unregister
MAX_API_BODY = 2 * 1024 * 1024  # /api/agent/jobs/: a job's progress report or result
MAX_RECOVERY_ANSWER = 8 * 1024 * 1024  # /api/agent/recovery/: an answer to the wizard
MAX_BLOB_BYTES = 4 * 1024**3  # /storage/: one blob through the local storage endpoint
# Django's DATA_UPLOAD_MAX_MEMORY_SIZE: the largest of the bodies read whole (JSON), so that
# Django never refuses one the endpoint's own limit allows. Downloads and blobs are streamed.
MAX_JSON_BODY = max(MAX_AGENT_API_BODY, MAX_API_BODY, MAX_RECOVERY_ANSWER)

# -- "call again later" -----------------------------------------------------------------------
# A busy portal (the agent API, the storage endpoint) answers 503, a machine over its rate
# limit 429, both with Retry-After; the agent waits that long before it calls again (its
# portal client holds back every call meanwhile, its storage client the call it retries).
RETRY_AFTER_STATUSES = (429, 503)


def retry_after_seconds(value: str | None, *, cap: float) -> float | None:
    """A ``Retry-After`` header (seconds, or an HTTP date) as seconds from now, at most
    ``cap`` (a server cannot park an agent for a day); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)


# What the agent may put in a progress event that the portal keeps (docs/jobs.md); the portal
# drops every other key.
PROGRESS_KEYS = (
    "phase",
    "files_done",
    "files_total",
    "bytes_done",
    "bytes_total",
    "new_bytes",
    "stored_bytes",
    "rate_bps",
    "eta_s",
    "current",
    "elapsed_s",
)


# -- a job's result ------------------------------------------------------------------------------
# The agent's id for one result (a uuid, made when the result is written to its outbox and
# sent with every attempt): the portal answers the same (job, result id) the same way.
RESULT_ID = "result_id"


class BadResult(ValueError):
    """A report from the other side (a job's result below, a policy confirmation) that does not
    have its shape; the message says what is wrong."""


# What one field of a report may hold: a count fits a signed 64-bit column, a version or a
# warning count a 32-bit one; a recovery point or pack id is a hex digest, a blob name a short
# path.
MAX_COUNT = 2**63 - 1
MAX_SMALL_COUNT = 2**31 - 1
MAX_ID_CHARS = 64
MAX_BLOB_NAME_CHARS = 200
MAX_STATS = 64


def wire_count(value: object, name: str, *, high: int = MAX_COUNT) -> int:
    """A whole number from 0 to ``high`` sent by the other side, or ``BadResult`` naming the
    field (``True`` is not a number here, nor is ``"12"`` or ``1.5``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise BadResult(f"{name} must be a whole number from 0 to {high} (got {_shown(value)}).")
    return value


def wire_text(value: object, name: str, *, max_chars: int, default: str = "") -> str:
    """A string of at most ``max_chars`` (``None`` is ``default``), or ``BadResult``."""
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > max_chars:
        raise BadResult(f"{name} must be text of at most {max_chars} characters.")
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class JobResult:
    """The agent's final word on a job, the same shape for backup, restore and download.

    ``message`` is for the person reading the job page: why it failed, why it was cancelled,
    or a summary of what went wrong in part; empty for a clean success. A backup that made a
    recovery point names it (``recovery_point_id``, ``manifest_blob``) with the pack ids it
    references, which the portal needs for garbage collection.
    """

    status: str
    message: str = ""
    warnings: list[dict] = field(default_factory=list)
    warning_count: int | None = None
    stats: dict[str, int] = field(default_factory=dict)
    recovery_point_id: str | None = None
    manifest_blob: str = ""
    pack_ids: list[str] = field(default_factory=list)

    @classmethod
    def failed(cls, message: str) -> JobResult:
        return cls(status=JobStatus.FAILED, message=message)

    def to_wire(self) -> dict[str, Any]:
        warnings = list(self.warnings)
        return {
            "status": str(self.status),
            "message": self.message,
            "warnings": warnings[:MAX_WARNINGS],
            "warning_count": len(warnings) if self.warning_count is None else self.warning_count,
            "stats": dict(self.stats),
            "recovery_point_id": self.recovery_point_id,
            "manifest_blob": self.manifest_blob,
            "pack_ids": list(self.pack_ids),
        }

    @classmethod
    def from_wire(cls, data: object) -> JobResult:
        """Parse a result body; ``BadResult`` says what is wrong with it."""
        if not isinstance(data, dict):
            raise BadResult("The result is not a JSON object.")
        status = data.get("status")
        if status not in FINISHED_STATUSES:
            raise BadResult(
                f"status must be one of {', '.join(FINISHED_STATUSES)} (got {_shown(status)})."
            )
        warnings = data.get("warnings") or []
        stats = data.get("stats") or {}
        packs = data.get("pack_ids") or []
        if not isinstance(warnings, list) or not isinstance(stats, dict):
            raise BadResult("warnings must be a list and stats an object.")
        if len(stats) > MAX_STATS:
            raise BadResult(f"stats may hold at most {MAX_STATS} counts.")
        stats = {
            wire_text(key, "a stats name", max_chars=MAX_ID_CHARS): wire_count(
                value, f"stats.{key}"
            )
            for key, value in stats.items()
        }
        if not isinstance(packs, list):
            raise BadResult("pack_ids must be a list of pack ids.")
        count = data.get("warning_count")
        # agents before the shared result shape sent the message as "error"
        message = data.get("message") or data.get("error")
        if message is not None and not isinstance(message, str):
            raise BadResult("message must be text.")
        point = data.get("recovery_point_id") or None
        return cls(
            status=JobStatus(status),
            message=message or "",
            warnings=warnings,
            warning_count=None
            if count is None
            else wire_count(count, "warning_count", high=MAX_SMALL_COUNT),
            stats=stats,
            recovery_point_id=wire_text(point, "recovery_point_id", max_chars=MAX_ID_CHARS) or None,
            manifest_blob=wire_text(
                data.get("manifest_blob"), "manifest_blob", max_chars=MAX_BLOB_NAME_CHARS
            ),
            pack_ids=[
                wire_text(p, "each of pack_ids", max_chars=MAX_ID_CHARS)
                for p in packs
                if p is not None
            ],
        )
