"""Authenticating agents on the agent API: per-machine bearer tokens, stored hashed.

Every agent endpoint is wrapped in ``machine_api``: it resolves the token to a live
machine (``request.machine``), refuses revoked tokens and unregistered machines, and
rate-limits each machine. Endpoints that name a vault or a job must still check that it
belongs to ``request.machine`` (``require_own``). Bodies are read with ``json_body`` and
errors answered with ``api_error``, the same way on every agent endpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import secrets
import threading
import time

import redis.exceptions
from django.core.cache import cache
from django.db import transaction
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from agents.models import Machine, MachineToken
from portal.pools import RedisPoolTimeout

log = logging.getLogger(__name__)

TOKEN_PREFIX = "hvn_"
RATE_LIMIT_PER_MINUTE = 600
RATE_WINDOW_SECONDS = 60  # rate limits count requests per minute of the clock
LAST_USED_RESOLUTION_SECONDS = 60


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def machine_token_issue(*, machine: Machine) -> str:
    """A new token for ``machine``; the plaintext is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    MachineToken.objects.create(machine=machine, token_hash=token_hash(token))
    return token


def machine_tokens_revoke(*, machine: Machine) -> int:
    from agents.live_auth import forget_tokens

    revoked = MachineToken.objects.filter(machine=machine, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    # This process's token cache at once; the others' when they see the database's token
    # counter move (agents.live_auth: within GENERATION_FRESH_SECONDS).
    transaction.on_commit(forget_tokens)
    return revoked


def _live_token(authorization: str) -> MachineToken | None:
    """The unrevoked token of a registered machine named by an ``Authorization`` header."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        return None
    record = (
        MachineToken.objects.select_related("machine", "machine__vault")
        .filter(token_hash=token_hash(token.strip()), revoked_at__isnull=True)
        .first()
    )
    if record is None or record.machine.unregistered_at is not None:
        return None
    return record


def machine_token_is_live(authorization: str) -> bool:
    """Whether the header carries a live machine token (read-only: portal/gate.py asks
    this before a request's body is read; the view then loads the machine itself)."""
    return _live_token(authorization) is not None


def machine_from_request(request) -> Machine | None:
    record = _live_token(request.headers.get("Authorization", ""))
    if record is None:
        return None
    now = timezone.now()
    if (
        record.last_used_at is None
        or (now - record.last_used_at).total_seconds() > LAST_USED_RESOLUTION_SECONDS
    ):
        MachineToken.objects.filter(pk=record.pk).update(last_used_at=now)
    return record.machine


# What the cache raises when its server is away: Redis's connection errors (Django's
# RedisCache passes them through), and the file-based cache's OSError (folder gone, disk
# full). Anything else is a bug and is not caught. A pool that had no connection free in
# time (``RedisPoolTimeout``, a ConnectionError too) is not an unreachable cache but a busy
# process: it is let through, to be answered 503 with Retry-After (portal.concurrency).
CACHE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)
# While the cache is unreachable the limits are counted in this process instead (each
# portal process then allows up to the limit: looser, never unlimited), and this is logged
# at most once per LOG_EVERY seconds.
LOG_EVERY = 60


class _LocalCounter:
    """Per-minute counters in this process: the limiter's fallback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._window = -1
        self._logged_at = float("-inf")

    def incr(self, key: str, window: int) -> int:
        with self._lock:
            if window != self._window:  # a new minute: the old counters expire together
                self._counts.clear()
                self._window = window
            self._counts[key] = self._counts.get(key, 0) + 1
            return self._counts[key]

    def should_log(self, now: float) -> bool:
        with self._lock:
            if now - self._logged_at < LOG_EVERY:
                return False
            self._logged_at = now
            return True


_local = _LocalCounter()


def rate_limited(message: str) -> JsonResponse:
    """429 with ``Retry-After``: the seconds until this minute's counters start again (the
    agent's client sends nothing to the portal before then, agents.runtime.portal_api)."""
    response = api_error(429, "rate_limited", message)
    seconds_in = int(time.time() % RATE_WINDOW_SECONDS)
    response["Retry-After"] = str(RATE_WINDOW_SECONDS - seconds_in)  # 1 to 60
    return response


def over_limit(scope: str, who: str, limit: int) -> bool:
    """Count one request of ``who`` in this minute; whether it is over ``limit``. Counted
    in the cache, shared by every portal process; when the cache is unreachable, in this
    process (fails open to a local limit, with a log line), never a 500."""
    now = time.time()
    window = int(now // RATE_WINDOW_SECONDS)
    key = f"{scope}:{who}:{window}"
    try:
        cache.add(key, 0, timeout=120)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=120)
            count = 1
    except RedisPoolTimeout:
        raise
    except CACHE_ERRORS as exc:
        if _local.should_log(now):
            log.warning(
                "rate limits are counted per process: the cache is unreachable (%s: %s)",
                type(exc).__name__, exc,
            )  # fmt: skip
        count = _local.incr(key, window)
    return count > limit


def _rate_limited(machine: Machine) -> bool:
    return over_limit("agent-api-rate", str(machine.pk), RATE_LIMIT_PER_MINUTE)


def json_body(request, *, max_bytes: int) -> dict | None:
    """The request's JSON object (``{}`` for no body), or None when it is larger than
    ``max_bytes``, not JSON (NaN and Infinity included), nested past Python's recursion
    limit, not an object, or holds a NUL in any text."""
    return json_object(request.body, max_bytes=max_bytes)


def json_object(body: bytes, *, max_bytes: int) -> dict | None:
    """``json_body`` of a body already read (``portal.hotpath``)."""
    if len(body) > max_bytes:
        return None
    try:
        data = json.loads(body or b"{}", parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):  # UnicodeDecodeError included; [[[[... nested
        return None
    if _holds_nul(data):
        return None
    return data if isinstance(data, dict) else None


def _holds_nul(data) -> bool:
    """Whether any text in the parsed body holds a NUL: no name, path or message does, and
    PostgreSQL stores it in no column (``\\u0000`` in JSON is a 500 at the first write)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _no_constant(name: str):
    """NaN and Infinity are not JSON, though Python's parser takes them (and no column can
    hold them)."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """``1e999`` parses as infinity: refused like ``Infinity`` itself."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def api_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=status)


UNAUTHENTICATED = (
    "This machine's token is missing, revoked or unknown. If the machine was "
    "unregistered in the portal, register it again with haven-agent register."
)


def machine_api(view):
    """Require a valid machine token; sets ``request.machine``."""

    @csrf_exempt
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        machine = machine_from_request(request)
        if machine is None:
            return api_error(401, "unauthenticated", UNAUTHENTICATED)
        if _rate_limited(machine):
            return rate_limited("Too many requests from this machine; slow down.")
        request.machine = machine
        return view(request, *args, **kwargs)

    return wrapper


def require_own(request, obj_machine_id) -> JsonResponse | None:
    """A 404 response unless the object belongs to the calling machine."""
    if str(obj_machine_id) != str(request.machine.pk):
        return api_error(404, "not_found", "No such object for this machine.")
    return None
