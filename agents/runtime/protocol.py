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
VERIFY_TASK = "haven.agent.verify"
DRILL_TASK = "haven.agent.drill"
COMPACT_TASK = "haven.agent.compact"
# The first backup of an Offline policy, written by the agent into the staging folder the
# portal's job names (docs/seeding.md); the job's details carry the folder under this key.
SEED_EXPORT_TASK = "haven.agent.seed.export"
SEED_FOLDER = "folder"
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

# -- restore drills (docs/drills.md) ------------------------------------------------------------
# What a drill restores: a sample of the latest point, or all of it.
DRILL_SAMPLE = "sample"
DRILL_WHOLE = "whole"
DRILL_LARGEST = 20  # a sample holds at least the 20 largest files (and a random set)
DRILL_DEFAULT_PERCENT = 1.0
DRILL_DEFAULT_CAP_MB = 1024
# The counts a drill's result carries in ``stats`` (the evidence the portal checks and keeps).
DRILL_STATS = (
    "files",  # restored and read back
    "bytes",
    "restore_ms",  # the restore alone (the rate is bytes / restore_ms)
    "verify_ms",
    "mismatches",
    "point_files",  # the whole point, for the time a full restore would take
    "point_bytes",
    "over_cap",  # sampled files left out by the cap
)
# Faster than this is not a restore a disk did (the portal refuses such evidence).
DRILL_MAX_BYTES_PER_SECOND = 20 * 1000**3

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
# A verify job's damage report (``JobResult.damage``): at most this many entries (a damaged
# pack, a manifest that does not open, files whose data is missing), each naming at most
# MAX_DAMAGE_FILES files and MAX_DAMAGE_POINTS recovery points.
MAX_DAMAGE_ENTRIES = 200
MAX_DAMAGE_FILES = 50
MAX_DAMAGE_POINTS = 1000
MAX_PATH_CHARS = 1000
MAX_REASON_CHARS = 500
# A verify job reads slice ``details.slice`` of ``details.slices`` (1: every pack); the policy's
# "every N weeks" is the number of slices, at most this.
MAX_VERIFY_SLICES = 52
PACK_ID_CHARS = 32  # a pack id in hex (agents.runtime.engine.layout)
# A compaction report describes at most this many chunk objects (its JSON stays well under
# MAX_API_BODY); the agent leaves the packs beyond for its next run.
COMPACT_MAX_OBJECTS = 30_000
# A compact job's ``details`` key: the dead share (0..1) above which a pack is rewritten.
COMPACT_THRESHOLD = "threshold"


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
class CompactedPack:
    """One pack a compaction rewrote: every chunk object of it, in offset order, as
    ``(offset, length)`` (dead: not copied) or ``(offset, length, new, new_offset)``: copied
    byte for byte to ``new_offset`` of ``CompactReport.new_packs[new]``."""

    pack: str
    size: int
    objects: list[tuple[int, ...]]


@dataclass
class CompactReport:
    """What a compaction wrote (``new_packs``: pack id, size) and where every object of the
    packs it rewrote went; the portal checks it against storage before it deletes a pack
    (docs/jobs.md, "Compact")."""

    packs: list[CompactedPack] = field(default_factory=list)
    new_packs: list[tuple[str, int]] = field(default_factory=list)

    @property
    def object_count(self) -> int:
        return sum(len(p.objects) for p in self.packs)

    def to_wire(self) -> dict[str, Any]:
        return {
            "packs": [
                {"pack": p.pack, "size": p.size, "objects": [list(o) for o in p.objects]}
                for p in self.packs
            ],
            "new_packs": [{"pack": pack, "size": size} for pack, size in self.new_packs],
        }

    @classmethod
    def from_wire(cls, data: object) -> CompactReport:
        """Parse a report's shape (not its truth: the portal checks that against storage);
        ``BadResult`` says what is wrong."""
        if not isinstance(data, dict):
            raise BadResult("compaction must be an object.")
        packs, new = data.get("packs"), data.get("new_packs")
        if not isinstance(packs, list) or not isinstance(new, list):
            raise BadResult("compaction.packs and compaction.new_packs must be lists.")
        report = cls()
        for item in new:
            if not isinstance(item, dict):
                raise BadResult("each of compaction.new_packs must be an object.")
            report.new_packs.append(
                (_pack_id(item.get("pack")), wire_count(item.get("size"), "a new pack's size"))
            )
        count = 0
        for item in packs:
            if not isinstance(item, dict) or not isinstance(item.get("objects"), list):
                raise BadResult("each of compaction.packs must be an object with objects.")
            objects = []
            for obj in item["objects"]:
                count += 1
                if count > COMPACT_MAX_OBJECTS:
                    raise BadResult(
                        f"a compaction report describes at most {COMPACT_MAX_OBJECTS} objects."
                    )
                if not isinstance(obj, list) or len(obj) not in (2, 4):
                    raise BadResult(
                        "each object is [offset, length] or [offset, length, new, new offset]."
                    )
                values = tuple(wire_count(v, "an object's offset or length") for v in obj)
                if len(values) == 4 and values[2] >= len(report.new_packs):
                    raise BadResult("an object names a new pack the report does not list.")
                objects.append(values)
            report.packs.append(
                CompactedPack(
                    pack=_pack_id(item.get("pack")),
                    size=wire_count(item.get("size"), "a pack's size"),
                    objects=objects,
                )
            )
        return report


def _pack_id(value: object) -> str:
    if not isinstance(value, str) or len(value) != PACK_ID_CHARS or value.strip("0123456789abcdef"):
        raise BadResult(f"a pack id must be {PACK_ID_CHARS} lowercase hex digits.")
    return value


@dataclass
class JobResult:
    """The agent's final word on a job, the same shape for backup, restore and download.

    ``message`` is for the person reading the job page: why it failed, why it was cancelled,
    or a summary of what went wrong in part; empty for a clean success. A backup that made a
    recovery point names it (``recovery_point_id``, ``manifest_blob``) with the pack ids it
    references, which the portal needs for garbage collection; a compaction says what it
    rewrote (``compaction``).
    """

    status: str
    message: str = ""
    warnings: list[dict] = field(default_factory=list)
    warning_count: int | None = None
    stats: dict[str, int] = field(default_factory=dict)
    recovery_point_id: str | None = None
    manifest_blob: str = ""
    pack_ids: list[str] = field(default_factory=list)
    # A verify job's findings (``verify_damage``'s shape); empty for every other kind.
    damage: list[dict] = field(default_factory=list)
    compaction: CompactReport | None = None

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
            "damage": list(self.damage),
            "compaction": self.compaction.to_wire() if self.compaction is not None else None,
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
        compaction = data.get("compaction")
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
            damage=verify_damage(data.get("damage")),
            compaction=None if compaction is None else CompactReport.from_wire(compaction),
        )


def _hex_id(value: object, name: str) -> str:
    text = wire_text(value, name, max_chars=MAX_ID_CHARS)
    if text and not all(c in "0123456789abcdef" for c in text):
        raise BadResult(f"{name} must be a lowercase hex id (got {_shown(value)}).")
    return text


def verify_damage(value: object) -> list[dict]:
    """A verify job's damage report, checked: a list of at most ``MAX_DAMAGE_ENTRIES``
    ``{"pack": hex id or "", "reason": text, "recovery_points": [hex ids], "files":
    [{"recovery_point": hex id, "path": text}]}``; ``BadResult`` says what is wrong."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_DAMAGE_ENTRIES:
        raise BadResult(f"damage must be a list of at most {MAX_DAMAGE_ENTRIES} entries.")
    entries = []
    for item in value:
        if not isinstance(item, dict):
            raise BadResult("each damage entry must be an object.")
        points = item.get("recovery_points") or []
        files = item.get("files") or []
        if not isinstance(points, list) or len(points) > MAX_DAMAGE_POINTS:
            raise BadResult(
                f"damage.recovery_points must be a list of at most {MAX_DAMAGE_POINTS} ids."
            )
        if not isinstance(files, list) or len(files) > MAX_DAMAGE_FILES:
            raise BadResult(f"damage.files must be a list of at most {MAX_DAMAGE_FILES} files.")
        checked_files = []
        for f in files:
            if not isinstance(f, dict):
                raise BadResult("each of damage.files must be an object.")
            checked_files.append(
                {
                    "recovery_point": _hex_id(
                        f.get("recovery_point"), "damage.files.recovery_point"
                    ),
                    "path": wire_text(f.get("path"), "damage.files.path", max_chars=MAX_PATH_CHARS),
                }
            )
        entries.append(
            {
                "pack": _hex_id(item.get("pack"), "damage.pack"),
                "reason": wire_text(
                    item.get("reason"), "damage.reason", max_chars=MAX_REASON_CHARS
                ),
                "recovery_points": sorted(
                    {_hex_id(p, "each of damage.recovery_points") for p in points} - {""}
                ),
                "files": checked_files,
            }
        )
    return entries
