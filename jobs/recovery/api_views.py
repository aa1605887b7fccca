"""The agent's side of Recover Data (``/api/agent/recovery/``): a read-only grant to another
machine's backups (only as a person authorised: services.source_grant), or to a secondary
copy (``region``, Cross Region Restore), answers to the wizard's questions, and download archives. Every endpoint
authenticates the machine (``machine_api``)."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.http import require_POST

from agents.api_auth import api_error, json_body, machine_api
from agents.runtime.blobstore import StorageError
from agents.runtime.protocol import MAX_RECOVERY_ANSWER, REGION_PRIMARY, REGIONS
from jobs.models import Job
from jobs.recovery import services

MAX_MACHINE_REF = 255  # a machine's id or name (Machine.name's length)


@machine_api
@require_POST
def grant(request):
    """``{"source_machine": NAME or ID}`` or ``{"source_machine_id": ID}``, optionally
    ``"vault_credentials"``: a read-only grant to that machine's container, registered or
    gone; the answer names the machine (``services.machine_summary``) and the other machines
    the name could have meant (``other_machines``)."""
    data = json_body(request, max_bytes=MAX_RECOVERY_ANSWER)
    if data is None:
        return api_error(400, "bad_request", "Send a JSON object.")
    source_ref, source_id = data.get("source_machine"), data.get("source_machine_id")
    refs = [ref for ref in (source_ref, source_id) if ref is not None]
    if len(refs) != 1 or not isinstance(refs[0], str) or not 0 < len(refs[0]) <= MAX_MACHINE_REF:
        return api_error(
            400,
            "bad_request",
            "Name the source machine (source_machine) or give its id (source_machine_id).",
        )
    credentials = data.get("vault_credentials")
    if credentials is not None and not isinstance(credentials, str):
        return api_error(400, "bad_request", "Send the vault credentials file's text.")
    region = data.get("region", REGION_PRIMARY)
    if region not in REGIONS:
        return api_error(400, "bad_request", f"region is one of {', '.join(REGIONS)}.")
    try:
        found, new_grant = services.source_grant(
            machine=request.machine,
            source_ref=source_ref or "",
            source_id=source_id or "",
            credentials=credentials.encode("utf-8") if credentials else None,
            region=region,
        )
    except services.SourceNotAuthorised as exc:
        return api_error(exc.status, exc.code, str(exc))
    except services.RecoveryRefused as exc:
        return api_error(404, "not_found", str(exc))
    except StorageError as exc:
        return api_error(503, "storage_unavailable", f"The storage cannot issue a grant: {exc}")
    return JsonResponse(
        {
            "grant": new_grant,
            "machine": services.machine_summary(found.machine),
            "other_machines": [services.machine_summary(m) for m in found.others],
        }
    )


@machine_api
@require_POST
def answer(request, request_id):
    data = json_body(request, max_bytes=MAX_RECOVERY_ANSWER)
    if data is None:
        return api_error(400, "bad_request", "The answer is not a JSON object (or too large).")
    if not services.answer_store(machine=request.machine, request_id=request_id, body=data):
        return api_error(404, "not_found", "No such request for this machine (it may be stale).")
    return JsonResponse({"ok": True})


@machine_api
@require_POST
def download(request, job_id):
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.machine_id != request.machine.pk:
        return api_error(404, "not_found", "No such job for this machine.")
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        length = -1
    if length <= 0:
        return api_error(400, "bad_request", "Send the archive with its Content-Length.")
    try:
        size = services.download_receive(
            machine=request.machine, job=job, stream=request, length=length
        )
    except services.RecoveryRefused as exc:
        return api_error(409, "refused", str(exc))
    except StorageError as exc:
        return api_error(
            503, "storage_unavailable", f"The portal could not store the archive: {exc}"
        )
    return JsonResponse({"ok": True, "bytes": size})
