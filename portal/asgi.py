"""ASGI entry point: HTTP through Django, websockets through Channels."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from portal import realtime  # noqa: E402
from portal.routing import websocket_urlpatterns  # noqa: E402


def _mark_serving(app):
    """Record the serving process so in-process pushes skip the relay (portal.realtime)."""

    async def wrapper(scope, receive, send):
        if realtime.serving_pid != os.getpid():
            realtime.serving_pid = os.getpid()
        return await app(scope, receive, send)

    return wrapper


application = _mark_serving(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            ),
        }
    )
)
