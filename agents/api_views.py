"""The agent API: identity, register, heartbeat, storage grant renewal, unregister.

Requests and answers are JSON; errors are ``{"error": code, "message": text}``. Every
endpoint but ``identity`` and ``register`` needs the machine's bearer token
(``machine_api``); a body naming a ``vault_id`` must name the machine's own vault.
"""

from __future__ import annotations

from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from agents import services
from agents.api_auth import api_error, json_body, machine_api, over_limit, rate_limited
from agents.runtime.protocol import MAX_AGENT_API_BODY as MAX_BODY
from agents.runtime.version import __version__
from portal import signing

REGISTER_LIMIT_PER_MINUTE = 30


def _own_vault(request, data: dict) -> JsonResponse | None:
    """404 when the body names a vault that is not the calling machine's."""
    vault_id = data.get("vault_id")
    if vault_id and str(vault_id) != str(request.machine.vault_id):
        return api_error(404, "not_found", "This machine does not belong to that vault.")
    return None


@require_GET
def identity(request):
    return JsonResponse(
        {
            "public_key": signing.public_key_b64(),
            "fingerprint": signing.key_fingerprint(),
            "version": __version__,
            "agent_version": __version__,
            "time": timezone.now().isoformat(),
        }
    )


def _register_rate_limited(request) -> bool:
    who = request.META.get("REMOTE_ADDR", "?")
    return over_limit("agent-register-rate", who, REGISTER_LIMIT_PER_MINUTE)


@csrf_exempt
@require_POST
def register(request):
    if _register_rate_limited(request):
        return rate_limited("Too many registrations from this address.")
    data = json_body(request, max_bytes=MAX_BODY)
    if data is None or not isinstance(data.get("credentials"), str):
        return api_error(400, "malformed", "Send JSON with the vault credentials file's text.")
    try:
        _machine, answer = services.machine_register(
            content=data["credentials"].encode("utf-8"),
            machine_name=str(data.get("machine_name", "")),
            hostname=str(data.get("hostname", "")),
            os_name=str(data.get("os_name", "")),
            agent_version=str(data.get("agent_version", "")),
            time_zone=str(data.get("time_zone", "UTC")),
            replace=bool(data.get("replace")),
            replaces_machine_id=str(data.get("replaces_machine_id", "")),
        )
    except services.MachineError as exc:
        return api_error(exc.status, exc.code, exc.message)
    answer["portal_public_key"] = signing.public_key_b64()
    answer["portal_fingerprint"] = signing.key_fingerprint()
    return JsonResponse(answer, status=201)


@require_POST
@machine_api
def heartbeat(request):
    data = json_body(request, max_bytes=MAX_BODY)
    if data is None:
        return api_error(400, "malformed", "Send a JSON object.")
    refused = _own_vault(request, data)
    if refused:
        return refused
    if not data.get("check"):
        services.machine_heartbeat(
            machine=request.machine,
            agent_version=str(data.get("agent_version", "")),
            hostname=str(data.get("hostname", "")),
            os_name=str(data.get("os_name", "")),
        )
    return JsonResponse(
        {
            "machine_id": str(request.machine.pk),
            "time": timezone.now().isoformat(),
            "agent_version": __version__,
        }
    )


@require_POST
@machine_api
def grant(request):
    data = json_body(request, max_bytes=MAX_BODY)
    if data is None:
        return api_error(400, "malformed", "Send a JSON object.")
    refused = _own_vault(request, data)
    if refused:
        return refused
    try:
        new_grant = services.machine_grant_issue(machine=request.machine)
    except Exception as exc:
        return api_error(503, "storage_unavailable", f"No storage grant could be issued: {exc}")
    return JsonResponse({"grant": new_grant})


@require_POST
@machine_api
def unregister(request):
    data = json_body(request, max_bytes=MAX_BODY) or {}
    refused = _own_vault(request, data)
    if refused:
        return refused
    try:
        if data.get("rollback"):
            services.machine_registration_rollback(machine=request.machine)
        else:
            services.machine_unregister(machine=request.machine)
    except services.MachineError as exc:
        return api_error(exc.status, exc.code, exc.message)
    return JsonResponse({"unregistered": str(request.machine.pk)})
