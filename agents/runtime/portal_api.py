"""Talking to the portal's agent API (``/api/agent/``) over HTTP(S), through the proxy.

Every call either returns the decoded JSON or raises ``PortalUnreachable`` (network, DNS,
TLS, proxy, 5xx) or ``PortalRefused`` (the portal answered with an error ``code`` and a
message meant for a person).

A busy portal answers 503 (or 429) with ``Retry-After``: the client then sends nothing more
until that time has passed (capped at ``MAX_RETRY_AFTER``, plus a little jitter so a fleet
does not come back at the same instant). A GET is tried again after the wait (it changes
nothing); any other call raises ``PortalBusy``, for its caller to decide whether to send it
again (progress is simply sent with the next tick; a result is retried).
"""

from __future__ import annotations

import random
import threading
import time

import requests

from agents.runtime import protocol
from agents.runtime.version import __version__

TIMEOUT = (10, 30)
UPLOAD_TIMEOUT = (10, 300)  # a download archive of up to 64 MiB on a slow link
USER_AGENT = f"haven-agent/{__version__}"
MAX_RETRY_AFTER = 30.0  # the longest wait one busy answer can impose
BUSY_RETRIES = 4  # a GET answered "busy" is tried again at most this many times
IDEMPOTENT = frozenset({"GET", "HEAD"})


class PortalError(Exception):
    pass


class PortalUnreachable(PortalError):
    pass


class PortalBusy(PortalUnreachable):
    """The portal is up but too busy: it asked to be called again in ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header as seconds from now, capped at ``MAX_RETRY_AFTER``; None
    when absent or unreadable."""
    return protocol.retry_after_seconds(value, cap=MAX_RETRY_AFTER)


class PortalRefused(PortalError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


def _reason(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.ProxyError):
        return "the proxy refused or could not be reached (check the proxy URL and credentials)"
    if isinstance(exc, requests.exceptions.SSLError):
        return "the TLS certificate could not be verified"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    text = str(exc)
    if "Name or service not known" in text or "getaddrinfo" in text or "NameResolution" in text:
        return "the host name could not be resolved"
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0][:200] if text else exc.__class__.__name__


class PortalClient:
    def __init__(
        self, base_url: str, *, token: str = "", proxies: dict[str, str] | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if proxies:
            self.session.proxies.update(proxies)
            # A configured proxy wins over the environment (HTTPS_PROXY, NO_PROXY).
            self.session.trust_env = False
        # Monotonic time before which the portal asked not to be called (Retry-After).
        self.busy_until = 0.0
        self._busy_lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"{self.base_url}/api/agent/{path.lstrip('/')}"

    def request(self, method: str, path: str, payload: dict | None = None) -> dict:
        url = self.url(path)
        for attempt in range(BUSY_RETRIES + 1):
            self.wait_while_busy()
            try:
                response = self.session.request(method, url, json=payload, timeout=TIMEOUT)
            except requests.RequestException as exc:
                raise PortalUnreachable(
                    f"cannot reach the portal at {self.base_url}: {_reason(exc)}. Check that "
                    "the portal is running and that this machine can reach it (firewall, "
                    "proxy: haven-agent configure --proxy URL)."
                ) from None
            try:
                return self._answer(response, path)
            except PortalBusy:
                if method not in IDEMPOTENT or attempt == BUSY_RETRIES:
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def wait_while_busy(self) -> None:
        """Sleep until the time the portal's last busy answer asked for."""
        delay = self.busy_until - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def post(self, path: str, payload: dict | None = None) -> dict:
        return self.request("POST", path, payload or {})

    def identity(self) -> dict:
        body = self.get("identity/")
        if not isinstance(body.get("public_key"), str):
            raise PortalUnreachable(
                f"{self.base_url} answered /api/agent/identity/ without a public key: is it "
                "a Haven portal?"
            )
        return body

    def upload(
        self, path: str, fileobj, size: int, *, content_type: str = "application/gzip"
    ) -> dict:
        """Stream ``fileobj`` (``size`` bytes) as the raw body of a POST to ``path``."""
        url = self.url(path)
        self.wait_while_busy()
        try:
            response = self.session.post(
                url,
                data=fileobj,
                headers={"Content-Type": content_type, "Content-Length": str(size)},
                timeout=UPLOAD_TIMEOUT,
            )
        except requests.RequestException as exc:
            raise PortalUnreachable(
                f"cannot reach the portal at {self.base_url}: {_reason(exc)}"
            ) from None
        return self._answer(response, path)

    def _answer(self, response, path: str) -> dict:
        """The JSON body of an answer; ``PortalBusy`` for a 503 or 429 with Retry-After,
        ``PortalUnreachable`` for another 5xx or a body that is not JSON, ``PortalRefused``
        with the portal's reason for a 4xx."""
        url = self.url(path)
        try:
            body = response.json()
        except ValueError:
            body = None
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if response.status_code in protocol.RETRY_AFTER_STATUSES and retry_after is not None:
            wait = retry_after * random.uniform(1.0, 1.2)
            with self._busy_lock:
                self.busy_until = max(self.busy_until, time.monotonic() + wait)
            raise PortalBusy(
                f"the portal at {self.base_url} is busy and asked to try {path} again in "
                f"{retry_after:.0f} s",
                retry_after,
            )
        if response.status_code >= 500 or (body is None and response.status_code >= 400):
            raise PortalUnreachable(
                f"the portal at {self.base_url} answered {response.status_code} to {path}; "
                "it may be restarting or misconfigured. Try again in a minute."
            )
        if response.status_code >= 400:
            raise PortalRefused(
                response.status_code,
                str(body.get("error", "error")),
                str(body.get("message", f"refused with status {response.status_code}")),
            )
        if not isinstance(body, dict):
            raise PortalUnreachable(
                f"{url} did not answer with JSON: is {self.base_url} a Haven portal?"
            )
        return body

    def close(self) -> None:
        self.session.close()
