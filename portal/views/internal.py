"""The relay that lets other processes push live fragments with the in-memory layer."""

import hmac
import json

from django.http import HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from portal import realtime


@csrf_exempt
@require_POST
def realtime_relay(request):
    signature = request.headers.get("X-Haven-Signature", "")
    if not hmac.compare_digest(signature, realtime.relay_signature(request.body)):
        return HttpResponseForbidden("bad signature")
    try:
        message = json.loads(request.body)
        group, html = message["group"], message["html"]
    except (ValueError, TypeError, KeyError):  # signed by us, so only a bug sends this
        return HttpResponseBadRequest("send a JSON object with group and html")
    if not isinstance(group, str) or not isinstance(html, str):
        return HttpResponseBadRequest("group and html must be text")
    realtime.publish_now(group, html)
    return HttpResponse(status=204)
