"""ASGI entry point: HTTP through Django, websockets through Channels. Agent API and
storage requests pass ``portal.gate`` first, which refuses a body it should not read from
the headers alone (under daphne, before daphne reads the body). ``portal.hotpath`` then
answers a running job's steady progress report on the event loop; everything else goes
on to ``portal.concurrency``, which lets a bounded number of HTTP requests into Django at
once and answers the rest 503 with Retry-After once they have waited their turn too
long."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from portal import concurrency, gate, hotpath, realtime  # noqa: E402
from portal.routing import websocket_urlpatterns  # noqa: E402


def _mark_serving(app):
    """Record the serving process so in-process pushes skip the relay (portal.realtime),
    and have it load every live machine token at its first request of any kind, in the
    background (``agents.live_auth.warm``): a schedule's burst of starts right after a
    restart finds them there."""

    async def wrapper(scope, receive, send):
        if realtime.serving_pid != os.getpid():
            realtime.serving_pid = os.getpid()
            from agents.live_auth import warm

            warm()
        return await app(scope, receive, send)

    return wrapper


gate.install_in_daphne()

application = _mark_serving(
    ProtocolTypeRouter(
        {
            "http": gate.gate(hotpath.serve(concurrency.limit(django_asgi_app))),
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            ),
        }
    )
)
