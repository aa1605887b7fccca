"""A portal process that is full says so: it answers 503 with ``Retry-After``, never 500.

Two bounds (docs/configuration.md, "Sizing connections"):

- ``limit(app)``, an ASGI wrapper in front of Django: at most ``HAVEN_PORTAL_CONCURRENCY``
  HTTP requests inside Django at once. Django runs each request's synchronous code on a
  thread of its own (asgiref's per-request ``ThreadSensitiveContext``), and each thread
  holds its own database connection, so this bounds both. A request past the bound waits
  its turn up to ``HAVEN_PORTAL_QUEUE_SECONDS``, then is answered "busy". Websockets pass.
- ``server_error``, Django's 500 handler: a request that could not get a database
  connection from the pool within ``HAVEN_DB_POOL_TIMEOUT`` (``psycopg_pool.PoolTimeout``,
  which Django wraps in its ``OperationalError``) or a Redis connection within
  ``HAVEN_REDIS_POOL_TIMEOUT`` (``portal.pools.RedisPoolTimeout``) is answered "busy"
  too; any other error stays Django's plain 500.

"Busy" is JSON for the agent API and the storage endpoint (``agents.runtime.portal_api``
waits the ``Retry-After`` and tries again), a short page for people.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views.defaults import server_error as django_server_error

log = logging.getLogger(__name__)

BUSY_CODE = "busy"
MACHINE_PREFIXES = ("/api/agent/", "/storage/")
# The REST API for people answers every error as ``{"detail": ...}`` (portal/api/errors.py).
PEOPLE_API_PREFIX = "/api/v1/"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def busy_answer(path: str) -> tuple[str, bytes]:
    """The content type and body of a "busy" answer for ``path``."""
    seconds = settings.HAVEN_PORTAL_RETRY_AFTER
    message = f"The portal is busy. Try again in {seconds} second{'' if seconds == 1 else 's'}."
    if path.startswith(MACHINE_PREFIXES):
        body = json.dumps({"error": BUSY_CODE, "message": message}).encode()
        return "application/json", body
    if path.startswith(PEOPLE_API_PREFIX):
        return "application/json", json.dumps({"detail": message}).encode()
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>Busy - Haven</title></head><body><main>"
        f"<h1>The portal is busy</h1><p>{message}</p></main></body></html>"
    )
    return "text/html; charset=utf-8", page.encode()


def busy_headers(content_type: str, length: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type.encode()),
        (b"content-length", str(length).encode()),
        (b"retry-after", str(settings.HAVEN_PORTAL_RETRY_AFTER).encode()),
        (b"cache-control", b"no-store"),
        (b"content-security-policy", b"default-src 'none'"),
    ]


class Limiter:
    """At most ``limit`` HTTP requests in ``app`` at once; the rest wait in turn, up to
    ``wait`` seconds each, then are answered busy."""

    def __init__(self, app: ASGIApp, *, limit: int, wait: float):
        self.app = app
        self.limit = limit
        self.wait = wait
        self.inside = 0  # requests in the app now
        self.refused = 0
        self._semaphore: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:  # made on the server's event loop, at its first request
            self._semaphore = asyncio.Semaphore(self.limit)
        try:
            async with asyncio.timeout(self.wait):
                await self._semaphore.acquire()
        except TimeoutError:
            self.refused += 1
            await self._send_busy(scope, send)
            return
        self.inside += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inside -= 1
            self._semaphore.release()

    async def _send_busy(self, scope: Scope, send: Send) -> None:
        content_type, body = busy_answer(scope.get("path", ""))
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": busy_headers(content_type, len(body)),
            }
        )
        await send({"type": "http.response.body", "body": body})


def limit(app: ASGIApp) -> Limiter:
    return Limiter(
        app, limit=settings.HAVEN_PORTAL_CONCURRENCY, wait=settings.HAVEN_PORTAL_QUEUE_SECONDS
    )


def pool_timed_out(exc: BaseException | None) -> bool:
    """Whether ``exc`` comes from a connection pool that had nothing free in time."""
    from psycopg_pool import PoolTimeout

    from portal.pools import RedisPoolTimeout

    seen = 0
    while exc is not None and seen < 5:  # Django's OperationalError wraps the pool's
        if isinstance(exc, PoolTimeout | RedisPoolTimeout):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class QuietPoolTimeouts(logging.Filter):
    """Drops Django's "Service Unavailable" traceback for a pool timeout: the portal is
    busy, not broken, and ``server_error`` logs one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and pool_timed_out(record.exc_info[1]))


def database_away(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the database being away for a moment (restarting, its connection
    dropped): worth a retry, not a 500."""
    return isinstance(exc, OperationalError | InterfaceError)


def server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: "busy" when a connection pool had nothing free in time, or the
    database dropped the connection (a restart): 503 with ``Retry-After``, which the agent
    waits out, instead of a 500."""
    failure = sys.exc_info()[1]
    if pool_timed_out(failure) or database_away(failure):
        log.warning("%s: answered busy to %s", failure, request.path)
        content_type, body = busy_answer(request.path)
        response = HttpResponse(body, status=503, content_type=content_type)
        response["Retry-After"] = str(settings.HAVEN_PORTAL_RETRY_AFTER)
        response["Cache-Control"] = "no-store"
        return response
    if request.path.startswith(PEOPLE_API_PREFIX):
        body = json.dumps({"detail": "Server error: the portal's log has the details."})
        return HttpResponse(body, status=500, content_type="application/json")
    return django_server_error(request)
