"""Talking to the portal's agent API (``/api/agent/``) over HTTP(S), through the proxy.

Every call either returns the decoded JSON or raises ``PortalUnreachable`` (network, DNS,
TLS, proxy, 5xx) or ``PortalRefused`` (the portal answered with an error ``code`` and a
message meant for a person).
"""

from __future__ import annotations

import requests

from agents.runtime.version import __version__

TIMEOUT = (10, 30)
UPLOAD_TIMEOUT = (10, 300)  # a download archive of up to 64 MiB on a slow link
USER_AGENT = f"haven-agent/{__version__}"


class PortalError(Exception):
    pass


class PortalUnreachable(PortalError):
    pass


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

    def url(self, path: str) -> str:
        return f"{self.base_url}/api/agent/{path.lstrip('/')}"

    def request(self, method: str, path: str, payload: dict | None = None) -> dict:
        url = self.url(path)
        try:
            response = self.session.request(method, url, json=payload, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise PortalUnreachable(
                f"cannot reach the portal at {self.base_url}: {_reason(exc)}. Check that the "
                "portal is running and that this machine can reach it (firewall, proxy: "
                "haven-agent configure --proxy URL)."
            ) from None
        return self._answer(response, path)

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
        """The JSON body of an answer; ``PortalUnreachable`` for a 5xx or a body that is
        not JSON, ``PortalRefused`` with the portal's reason for a 4xx."""
        url = self.url(path)
        try:
            body = response.json()
        except ValueError:
            body = None
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
