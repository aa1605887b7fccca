"""The agent API's busiest request, answered on the server's event loop before Django.

Every running job posts its progress once a second. Through Django each report cost a
thread (asgiref runs a request's synchronous code on one of its own), the middleware
chain, two token checks and a database connection: about 16 ms of the portal's CPU. Here
``POST /api/agent/jobs/<id>/progress/`` is read and, in the common case, answered by
``jobs.progress_api`` without any of that, and so is every machine's heart-beat
(``agents.heartbeat_api``, once a minute each) (docs/benchmarks.md, "Load").

This sits behind ``portal.gate`` (a body with a wrong token or past its limit never gets
here) and in front of ``portal.concurrency``'s limit, which bounds the requests that go on
to Django. Whatever the fast handler does not answer — a report it leaves to the view, or
Redis or the database unreachable — goes on to Django with its body as it came, and is
answered there exactly as before. Without Redis (the embedded defaults) there is nothing
here: Django answers everything.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError

from portal.pools import PubSubChannelLayer

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # Django's <uuid:>
PROGRESS = re.compile(rf"^/api/agent/jobs/({UUID})/progress/$")
START = re.compile(rf"^/api/agent/jobs/({UUID})/start/$")
HEARTBEAT = "/api/agent/heartbeat/"

# Left to Django, which has its own answer to each (a busy pool included).
FALL_THROUGH_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    OSError,
    DatabaseError,
)


_policy_headers: list[tuple[bytes, bytes]] | None = None


def _forget_policy_headers(**kwargs: Any) -> None:
    global _policy_headers
    _policy_headers = None


setting_changed.connect(_forget_policy_headers)


def _headers(content_type: bytes, length: int) -> list[tuple[bytes, bytes]]:
    """Those Django's middleware gives an API answer (portal.middleware, SecurityMiddleware,
    XFrameOptionsMiddleware). The policy's are built once per process (again when a test
    changes the settings), not joined again for every answer."""
    global _policy_headers
    if _policy_headers is None:
        policy = "; ".join(
            f"{name} {' '.join(values)}" for name, values in settings.HAVEN_CSP.items()
        )
        _policy_headers = [
            (b"content-security-policy", policy.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
        ]
    return [
        (b"content-type", content_type),
        (b"content-length", str(length).encode()),
        *_policy_headers,
    ]


async def _read_body(receive: Receive, limit: int) -> tuple[list[Message], bytes, bool]:
    """The messages received, the body, and whether it is whole (not cut off past
    ``limit``, no disconnect)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, b"", False
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            return messages, b"", False
        if not message.get("more_body", False):
            return messages, b"".join(chunks), True


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives the app what was already read, then the rest."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


def _pubsub_layer() -> bool:
    """Whether live pushes go through the Redis pub/sub layer, whose batch sends and
    listener counts the hot path uses (``portal.pools.PubSubChannelLayer``)."""
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    return backend == f"{PubSubChannelLayer.__module__}.{PubSubChannelLayer.__qualname__}"


def serve(app: ASGIApp) -> ASGIApp:
    """``app`` with the hot path in front (only with Redis, and its pub/sub channel layer:
    a process whose settings name Redis but keep the in-memory layer, as a test's portal
    may, is served by the views alone)."""
    if not settings.REDIS_URL or not _pubsub_layer():
        return app

    async def hot(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        hot = scope["type"] == "http" and scope.get("method") == "POST"
        match = PROGRESS.match(path) if hot else None
        starting = START.match(path) if hot and match is None else None
        if match is None and starting is None and not (hot and path == HEARTBEAT):
            await app(scope, receive, send)
            return
        from agents import heartbeat_api
        from agents.live_auth import live_machine
        from agents.runtime.protocol import MAX_AGENT_API_BODY, MAX_API_BODY
        from jobs import progress_api

        messages: list[Message] = []
        answer = None
        try:
            authorization = ""
            for name, value in scope.get("headers", ()):
                if name.lower() == b"authorization":
                    authorization = value.decode("latin-1")
            machine = await live_machine(authorization)
            if machine is not None:
                limit = MAX_API_BODY if match else MAX_AGENT_API_BODY
                messages, body, whole = await _read_body(receive, limit)
                if whole and match:
                    answer = await progress_api.progress(match.group(1), machine, body)
                elif whole and starting:
                    answer = await progress_api.start(starting.group(1), machine)
                elif whole:
                    answer = await heartbeat_api.heartbeat(machine, body)
        except FALL_THROUGH_ERRORS as exc:
            log.info("%s left to the view: %s: %s", path, type(exc).__name__, exc)
            answer = None
        if answer is None:
            await app(scope, _replay(messages, receive), send)
            return
        body = json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": _headers(b"application/json", len(body)),
            }
        )
        await send({"type": "http.response.body", "body": body})

    return hot
