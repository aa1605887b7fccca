"""The relay that lets other processes push live fragments with the in-memory layer."""

import hmac
import json

from django.http import HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from portal import realtime


@csrf_exempt
@require_POST
def realtime_relay(request):
    signature = request.headers.get("X-Haven-Signature", "")
    if not hmac.compare_digest(signature, realtime.relay_signature(request.body)):
        return HttpResponseForbidden("bad signature")
    message = json.loads(request.body)
    realtime.publish_now(message["group"], message["html"])
    return HttpResponse(status=204)
