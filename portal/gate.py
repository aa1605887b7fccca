"""No request body is stored before its sender is known: the agent API and the storage
endpoint are answered from the headers alone when the credential is wrong or the declared
body is larger than the endpoint takes.

Each gated path has one limit (``agents.runtime.protocol``) and one kind of credential:
the machine's bearer token (``/api/agent/``, but registration, which authenticates with
the credentials file in its body) or the storage grant (``/storage/``). A request that
declares a body is checked before any of it is read:

- a wrong, revoked or missing credential: 401/403 JSON, as the view would answer;
- a ``Content-Length`` above the endpoint's limit: 413;
- a body without a length (chunked) is counted as it arrives and cut off past the limit.

Two layers do it, because servers differ in when they call the application:

- ``gate(app)``, an ASGI wrapper, for servers that stream the body to the application
  (uvicorn, hypercorn): it checks before the first ``receive()``.
- ``install_in_daphne()``: daphne (Twisted) reads the whole body into a temporary file and
  only then calls the application, so the ASGI wrapper would come too late there. Daphne's
  request class is swapped for a subclass that asks the same question as soon as the
  headers are in, stops reading from the socket until the answer, and on a refusal writes
  the answer and closes the connection, dropping whatever body still arrives. When the
  answer is known at once (``let_in_now``: a machine token the cache holds, the usual
  case) the body is read on without stopping.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import unquote

from agents.runtime import protocol

log = logging.getLogger(__name__)

MACHINE = "machine"
GRANT = "grant"
# After a refusal, the rest of a body the client already sent is read and dropped for this
# long, so the client sees the answer rather than a reset connection; then the door closes.
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class Rule:
    prefix: str
    limit: int
    credential: str | None  # MACHINE, GRANT, or None when the body itself authenticates

    @property
    def too_large_code(self) -> str:
        # Each API keeps its own spelling of error codes (agents/api_auth.py, storage views).
        return "too large" if self.credential == GRANT else "too_large"


# First match wins: the longer prefixes come first. tests/security/test_body_gate.py checks
# that each prefix is where portal/urls.py mounts the endpoint.
RULES = (
    Rule("/api/agent/jobs/", protocol.MAX_API_BODY, MACHINE),
    Rule("/api/agent/recovery/downloads/", protocol.DOWNLOAD_MAX_BYTES, MACHINE),
    Rule("/api/agent/recovery/", protocol.MAX_RECOVERY_ANSWER, MACHINE),
    Rule("/api/agent/register/", protocol.MAX_AGENT_API_BODY, None),
    Rule("/api/agent/identity/", protocol.MAX_AGENT_API_BODY, None),
    Rule("/api/agent/", protocol.MAX_AGENT_API_BODY, MACHINE),
    Rule("/storage/", protocol.MAX_BLOB_BYTES, GRANT),
)


def rule_for(path: str) -> Rule | None:
    for rule in RULES:
        if path.startswith(rule.prefix):
            return rule
    return None


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    challenge: str | None = None  # WWW-Authenticate, on a 401
    retry_after: int | None = None  # Retry-After, on a 503

    def body(self) -> bytes:
        return json.dumps({"error": self.code, "message": self.message}).encode()

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body())).encode()),
            (b"connection", b"close"),
        ]
        if self.challenge:
            headers.append((b"www-authenticate", self.challenge.encode()))
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
        return headers


def too_large(rule: Rule) -> Refusal:
    return Refusal(
        413,
        rule.too_large_code,
        f"The request body is larger than this endpoint takes ({rule.limit} bytes at most).",
    )


def unavailable() -> Refusal:
    """The check could not be made (a connection pool was empty, most often): retry."""
    from django.conf import settings

    return Refusal(
        503,
        "unavailable",
        "The portal could not check the request; retry.",
        retry_after=settings.HAVEN_PORTAL_RETRY_AFTER,
    )


def declared_length(headers: Mapping[str, str]) -> int | None:
    """The body's declared length: 0 for none, None for a body sent without a length
    (chunked). Raises ValueError for a length that is not a number."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return None
    raw = headers.get("content-length", "").strip()
    if not raw:
        return 0
    length = int(raw)
    if length < 0:
        raise ValueError(raw)
    return length


def let_in_now(rule: Rule, headers: Mapping[str, str]) -> bool:
    """Whether ``refusal_for`` would let this request in, known at once without a wait: a
    machine's token whose answer the cache holds (``agents.live_auth.held_machine``) and a
    body within the limit. Every agent request of a fleet at work is one (a heart-beat a
    minute keeps its token held); daphne then reads its body in the same step as its
    headers, with no future, no pause of the socket and no second turn of the loop."""
    if rule.credential != MACHINE:
        return False
    try:
        length = declared_length(headers)
    except ValueError:
        return False
    if length is not None and length > rule.limit:
        return False
    from agents.live_auth import held_machine

    return held_machine(headers.get("authorization", "")) is not None


async def refusal_for(
    rule: Rule, method: str, path: str, headers: Mapping[str, str]
) -> Refusal | None:
    """Why a request must be refused before its body is read, or None. ``headers`` has
    lower-case names. A request without a body is let through: there is nothing to
    store, and the view authenticates it."""
    try:
        length = declared_length(headers)
    except ValueError:
        return Refusal(400, "bad request", "Content-Length must be a whole number of bytes.")
    if length == 0:
        return None
    authorization = headers.get("authorization", "")
    if rule.credential == MACHINE:
        from agents.api_auth import UNAUTHENTICATED
        from agents.live_auth import live_machine

        # From the in-process token cache; a miss asks the database on the token threads
        # (agents.live_auth), the misses that come together in one query.
        if await live_machine(authorization) is None:
            return Refusal(401, "unauthenticated", UNAUTHENTICATED, challenge="Bearer")
    elif rule.credential == GRANT:
        from agents.runtime.blobstore.http import AUTH_SCHEME
        from vaults.storage.tokens import GrantRefused, claims_from_header

        container = path[len(rule.prefix) :].split("/", 1)[0]
        try:
            claims = claims_from_header(authorization, container)
        except GrantRefused as refused:
            challenge = AUTH_SCHEME if refused.status == 401 else None
            return Refusal(refused.status, refused.code, refused.message, challenge)
        if method == "PUT" and "c" not in claims.permissions:
            return Refusal(403, "forbidden", "this storage grant does not allow creating blobs")
    if length is not None and length > rule.limit:
        return too_large(rule)
    return None


def _header_map(pairs: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    return headers


# --- ASGI -----------------------------------------------------------------------------------
Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _send_refusal(send: Send, refusal: Refusal) -> None:
    await send(
        {"type": "http.response.start", "status": refusal.status, "headers": refusal.headers()}
    )
    await send({"type": "http.response.body", "body": refusal.body()})


def gate(app: ASGIApp) -> ASGIApp:
    """``app`` behind the checks above (HTTP only; websockets pass untouched)."""

    async def gated(scope: Scope, receive: Receive, send: Send) -> None:
        rule = rule_for(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None:
            await app(scope, receive, send)
            return
        try:
            refusal = await refusal_for(
                rule, scope["method"], scope["path"], _header_map(scope.get("headers", ()))
            )
        except Exception as exc:
            from portal.concurrency import pool_timed_out

            if not pool_timed_out(exc):
                raise
            refusal = unavailable()
        if refusal is not None:
            await _send_refusal(send, refusal)
            return
        received = 0
        cut_off = False
        started = False

        async def counted() -> Message:
            nonlocal received, cut_off
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > rule.limit:
                    # Django's handler stops reading and answers nothing; we answer below.
                    cut_off = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await app(scope, counted, tracked)
        if cut_off and not started:
            await _send_refusal(send, too_large(rule))

    return gated


# --- daphne ---------------------------------------------------------------------------------
def _raw_response(refusal: Refusal) -> bytes:
    reason = {
        400: b"Bad Request",
        401: b"Unauthorized",
        403: b"Forbidden",
        413: b"Too Large",
        503: b"Service Unavailable",
    }
    lines = [b"HTTP/1.1 %d %s" % (refusal.status, reason.get(refusal.status, b"Refused"))]
    lines += [name + b": " + value for name, value in refusal.headers()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + refusal.body()


def _gated_request_class(base: type) -> type:
    from twisted.internet.defer import Deferred
    from twisted.web import http

    class GatedWebRequest(base):  # type: ignore[misc, valid-type]
        """Daphne's request, asking ``refusal_for`` once the headers are in."""

        _gate_state: str | None = None  # None: not gated; "pending", "open", "refused"

        def gotLength(self, length: int | None) -> None:
            channel = self.channel
            raw = getattr(channel, "_path", b"") or b""
            path = unquote(raw.split(b"?", 1)[0].decode("latin-1"))
            rule = rule_for(path)
            if rule is None or length == 0:
                super().gotLength(length)
                return
            method = (getattr(channel, "_command", b"") or b"").decode("latin-1")
            headers = _header_map(
                (name, b",".join(values)) for name, values in self.requestHeaders.getAllRawHeaders()
            )
            self._gate_rule = rule
            self._gate_length = length
            self._gate_received = 0
            if let_in_now(rule, headers):
                # Known at once: open, the body still counted against the limit as it comes.
                self._gate_state = "open"
                super().gotLength(length)
                return
            self._gate_state = "pending"
            self._gate_finished: tuple | None = None
            # Twisted answers "100 Continue" right after this method, which would invite the
            # body before the answer: hold that back, and send it only on approval.
            expect = (self.requestHeaders.getRawHeaders(b"Expect") or [b""])[0]
            self._gate_continue = expect.lower() == b"100-continue" and (
                getattr(channel, "_version", b"") == b"HTTP/1.1"
            )
            self.requestHeaders.removeHeader(b"Expect")
            # Held in memory until the answer: the socket is paused, so at most what the
            # last read brought (Twisted reads 64 KiB at a time) lands here.
            self.content = BytesIO()
            channel.transport.pauseProducing()
            future = asyncio.ensure_future(refusal_for(rule, method, path, headers))
            Deferred.fromFuture(future).addCallbacks(self._gate_decided, self._gate_failed)

        def _gate_decided(self, refusal: Refusal | None) -> None:
            if self._gate_state != "pending":
                return
            if refusal is not None:
                self._gate_refuse(refusal)
                return
            self._gate_state = "open"
            held = self.content.getvalue()
            super().gotLength(self._gate_length)  # Twisted's own buffer from here on
            self.content.write(held)
            if self._gate_continue and self._gate_finished is None:
                self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.channel.transport.resumeProducing()
            if self._gate_finished is not None:
                super().requestReceived(*self._gate_finished)

        def _gate_failed(self, failure: Any) -> None:
            from portal.concurrency import pool_timed_out

            if pool_timed_out(failure.value):  # busy, not broken: no traceback
                log.warning("no connection free to check a request before its body")
            else:
                log.error("checking a request before its body failed: %s", failure.getTraceback())
            self._gate_refuse(unavailable())

        def _gate_refuse(self, refusal: Refusal) -> None:
            from twisted.internet import reactor

            self._gate_state = "refused"
            self.content = BytesIO()
            transport = self.channel.transport
            transport.write(_raw_response(refusal))
            transport.resumeProducing()  # read what is already on its way, and drop it
            reactor.callLater(LINGER_SECONDS, transport.loseConnection)

        def handleContentChunk(self, data: bytes) -> None:
            if self._gate_state is None:
                super().handleContentChunk(data)
                return
            if self._gate_state == "refused":
                return
            self._gate_received += len(data)
            if self._gate_received > self._gate_rule.limit:
                self._gate_refuse(too_large(self._gate_rule))
                return
            if self._gate_state == "pending":
                self.content.write(data)
            else:
                super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if self._gate_state == "refused":
                self.channel.transport.loseConnection()
                return
            if self._gate_state == "pending":
                self._gate_finished = (command, path, version)
                return
            super().requestReceived(command, path, version)

    GatedWebRequest.__name__ = GatedWebRequest.__qualname__ = "GatedWebRequest"
    assert issubclass(GatedWebRequest, http.Request)
    return GatedWebRequest


def install_in_daphne() -> None:
    """Make daphne's HTTP factory build gated requests (idempotent)."""
    from daphne import http_protocol

    current = http_protocol.WebRequest
    if getattr(current, "__name__", "") == "GatedWebRequest":
        return
    http_protocol.WebRequest = _gated_request_class(current)
