"""The agent's side of jobs (``/api/agent/jobs/``): Back up now from the machine, fetch a
job and the policy, report start, progress and the result. Every endpoint authenticates the machine
(``machine_api``) and answers 404 for a job of another machine. Schema: docs/jobs.md."""

from __future__ import annotations

import uuid
from datetime import date

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from agents.api_auth import api_error, json_body, machine_api, require_own
from agents.runtime.protocol import (
    MAX_API_BODY,
    MAX_ID_CHARS,
    MAX_SMALL_COUNT,
    RESULT_ID,
    BadResult,
    JobResult,
    wire_count,
    wire_text,
)
from jobs import services
from jobs.models import BackupPolicy, Job
from vaults.security_pin import PinRefused

# Jobs the portal runs itself (a seed's import, jobs/services/seeding.py) are no agent's:
# the machine's agent may not start, report on or finish them.
_AGENT_JOBS = Job.objects.exclude(operation=Job.Operation.IMPORT)


def _load(request, job_id):
    job = _AGENT_JOBS.select_related("machine", "vault", "created_by").filter(pk=job_id).first()
    if job is None:
        return None, api_error(404, "not_found", "No such job for this machine.")
    refused = require_own(request, job.machine_id)
    if refused is not None:
        return None, refused
    return job, None


def _policy_payload(policy: BackupPolicy | None) -> dict | None:
    if policy is None:
        return None
    return {"spec": policy.spec(), "version": policy.version, "spec_hash": policy.spec_hash}


@machine_api
@require_POST
def backup_now(request):
    """``{"retain_until": "YYYY-MM-DD" | null}`` -> 201 ``{"id", "status", "path"}``: Back
    up now of the calling machine (``haven-agent backup``), by the portal's rules and with
    its words when it refuses (409). A body naming another machine or vault is refused."""
    data = json_body(request, max_bytes=MAX_API_BODY)
    if data is None:
        return api_error(400, "bad_request", "Send a JSON object.")
    for key, own in (("machine_id", request.machine.pk), ("vault_id", request.machine.vault_id)):
        if data.get(key) and str(data[key]) != str(own):
            return api_error(404, "not_found", "A machine can start a backup of itself only.")
    raw = data.get("retain_until")
    retain_until = None
    if raw:
        try:
            retain_until = date.fromisoformat(str(raw)[:MAX_ID_CHARS])
        except ValueError:
            return api_error(400, "bad_request", "retain_until: enter a date like 2030-12-31.")
    try:
        job = services.backup_now(
            machine=request.machine, retain_until=retain_until, started_on_machine=True
        )
    except services.NoPolicy as exc:
        return api_error(409, "no_policy", str(exc))
    except services.ProtectionStopped as exc:
        return api_error(409, "protection_stopped", str(exc))
    except services.SeedPending as exc:
        return api_error(409, "seed_pending", str(exc))
    except services.BackupAlreadyRunning as exc:
        return JsonResponse(
            {
                "error": "backup_running",
                "message": str(exc),
                "job_id": str(exc.job.pk) if exc.job is not None else None,
            },
            status=409,
        )
    except ValidationError as exc:
        words = " ".join(exc.message_dict.get("retain_until", exc.messages))
        return api_error(400, "bad_request", f"retain_until: {words}")
    return JsonResponse(
        {
            "id": str(job.pk),
            "status": job.status,
            "path": reverse("jobs:detail", args=[job.pk]),
        },
        status=201,
    )


@machine_api
@require_GET
def job_detail(request, job_id):
    job, error = _load(request, job_id)
    if error:
        return error
    policy = BackupPolicy.objects.filter(machine=job.machine).first()
    return JsonResponse(
        {
            "id": str(job.pk),
            "operation": job.operation,
            "status": job.status,
            "trigger": job.trigger,
            "scheduled_for": job.scheduled_for.isoformat() if job.scheduled_for else None,
            "retain_until": job.retain_until.isoformat() if job.retain_until else None,
            "cancel": job.cancel_requested_at is not None or job.status not in Job.ACTIVE,
            "details": job.details,
            # For ``haven-agent backup --wait``: how far the job is, and how it ended.
            "progress": job.progress,
            "error": job.error,
            "warning_count": job.warning_count,
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "ended_at": job.ended_at.isoformat() if job.ended_at else None,
            "path": reverse("jobs:detail", args=[job.pk]),
            "policy": _policy_payload(policy),
            "tags": [job.trigger, f"job:{job.pk}"],
            "min_cache_free_bytes": settings.HAVEN_AGENT_MIN_CACHE_FREE_MB * 1024 * 1024,
        }
    )


@machine_api
@require_POST
def job_start(request, job_id):
    job, error = _load(request, job_id)
    if error:
        return error
    if job.status not in Job.ACTIVE:
        return JsonResponse({"cancel": True, "status": job.status})
    services.job_mark_started(job=job)
    return JsonResponse({"cancel": job.cancel_requested_at is not None, "status": job.status})


# What a progress report reads of its job: one row, no joins (the hot path, once a
# second per running job); a report that re-renders the fragments loads the rest.
PROGRESS_FIELDS = (
    "machine",
    "vault",
    "operation",
    "status",
    "progress",
    "bytes_transferred",
    "last_report_at",
    "started_at",
    "ended_at",
    "cancel_requested_at",
)


@machine_api
@require_POST
def job_progress(request, job_id):
    job = _AGENT_JOBS.only(*PROGRESS_FIELDS).filter(pk=job_id).order_by().first()
    if job is None:
        return api_error(404, "not_found", "No such job for this machine.")
    error = require_own(request, job.machine_id)
    if error:
        return error
    event = json_body(request, max_bytes=MAX_API_BODY)
    if event is None:
        return api_error(400, "bad_request", "The progress report is not a JSON object.")
    cancel = services.job_record_progress(job=job, event=event)
    return JsonResponse({"cancel": cancel})


@machine_api
@require_POST
def job_result(request, job_id):
    job, error = _load(request, job_id)
    if error:
        return error
    body = json_body(request, max_bytes=MAX_API_BODY)
    try:
        result = JobResult.from_wire(body)
    except BadResult as exc:
        return api_error(400, "bad_request", str(exc))
    result_id = _result_id(body)
    if result_id is None:
        return api_error(400, "bad_request", f"{RESULT_ID} must be a UUID when it is sent.")
    try:
        job = services.job_finish(
            job=job,
            status=str(result.status),
            error=result.message,
            warnings=result.warnings,
            warning_count=result.warning_count,
            stats=result.stats,
            snapshot_id=result.recovery_point_id or "",
            manifest_blob=result.manifest_blob,
            pack_ids=result.pack_ids,
            result_id=result_id,
            damage=result.damage,
            compaction=result.compaction,
        )
    except services.ResultConflict as exc:
        return api_error(409, "result_conflict", str(exc))
    except services.PointRefused as exc:
        # Logged by the service; the agent logs it too and does not send it again.
        return api_error(exc.status, "point_refused", exc.message)
    except services.VerifyReportRefused as exc:
        return api_error(exc.status, "report_refused", exc.message)
    except (services.PointUnverifiable, services.CompactionUnverifiable) as exc:
        return api_error(503, "storage_unavailable", str(exc))  # the agent retries
    return JsonResponse({"status": job.status})


def _result_id(body: dict) -> str | None:
    """The agent's id for the result ("" from agents that do not send one); None: not a UUID."""
    value = body.get(RESULT_ID) or ""
    if not value:
        return ""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


@machine_api
@require_GET
def policy_detail(request):
    policy = BackupPolicy.objects.filter(machine=request.machine).first()
    return JsonResponse({"policy": _policy_payload(policy)})


@machine_api
@require_POST
def policy_applied(request):
    data = json_body(request, max_bytes=MAX_API_BODY)
    if data is None:
        return api_error(400, "bad_request", "Send a JSON object.")
    try:
        version = wire_count(data.get("version", 0), "version", high=MAX_SMALL_COUNT)
        spec_hash = wire_text(data.get("spec_hash"), "spec_hash", max_chars=MAX_ID_CHARS)
        error = wire_text(data.get("message") or data.get("error"), "error", max_chars=MAX_API_BODY)
    except BadResult as exc:
        return api_error(400, "bad_request", str(exc))
    policy = BackupPolicy.objects.filter(machine=request.machine).first()
    if policy is None:
        return api_error(404, "not_found", "This machine has no backup policy.")
    services.policy_applied(policy=policy, version=version, spec_hash=spec_hash, error=error)
    return JsonResponse({"ok": True})


@machine_api
@require_POST
def passphrase_authorize(request):
    """``{"security_pin": PIN}`` -> ``{"change_id", "old_keys"}``, before the machine
    uploads its new key (docs/agent.md, change-passphrase)."""
    data = json_body(request, max_bytes=MAX_API_BODY)
    if data is None or not isinstance(data.get("security_pin", ""), str):
        return api_error(400, "malformed", "Send JSON with the security PIN.")
    try:
        change = services.passphrase_change_authorize(
            machine=request.machine, pin=data.get("security_pin", "")[:MAX_ID_CHARS]
        )
    except PinRefused as exc:
        return api_error(403, "pin_refused", str(exc))
    except services.PassphraseChangeRefused as exc:
        return api_error(exc.status, exc.code, str(exc))
    return JsonResponse({"change_id": str(change.pk), "old_keys": change.old_keys}, status=201)


@machine_api
@require_POST
def passphrase_complete(request, change_id):
    """``{"key": NAME}`` once ``keys/NAME`` is uploaded -> when the old keys go."""
    data = json_body(request, max_bytes=MAX_API_BODY)
    if data is None or not isinstance(data.get("key"), str):
        return api_error(400, "malformed", "Send JSON with the new key's name.")
    try:
        change = services.passphrase_change_complete(
            machine=request.machine, change_id=change_id, key_name=data["key"][:MAX_ID_CHARS]
        )
    except services.PassphraseChangeRefused as exc:
        return api_error(exc.status, exc.code, str(exc))
    assert change.retire_after is not None
    return JsonResponse(
        {"change_id": str(change.pk), "old_keys_removed_after": change.retire_after.isoformat()}
    )
