"""The portal's storage endpoint (local directory backend) through a grant token.

Wire protocol (served by ``vaults.storage.views``; see docs/storage-backends.md):

- ``PUT {base}{name}`` creates a blob from the request body (409 ``blob exists`` when the
  name holds other bytes; the same bytes again answer 201); ``GET`` returns it (``Range: bytes=a-b``
  gives 206); ``HEAD`` answers 200 or 404; ``DELETE`` removes it (needs ``d``).
- ``GET {base}?prefix=p&marker=m`` lists, in name order, as JSON
  ``{"blobs": [{"name", "size", "modified"}], "next_marker": str | null}``.
- Every request carries ``Authorization: HavenGrant <token>``; errors are JSON
  ``{"error": "<code>", "message": "<for a person>"}``.

The token goes only in that header, never in a URL, so proxies and access logs never see it.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from agents.runtime.blobstore._common import check_name, check_range, network_reason
from agents.runtime.blobstore.base import (
    BlobExists,
    BlobForbidden,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    ContainerNotFound,
    GrantExpired,
    InvalidBlobName,
    StorageError,
    StorageUnavailable,
)
from agents.runtime.protocol import RETRY_AFTER_STATUSES, retry_after_seconds

AUTH_SCHEME = "HavenGrant"
RETRY_AFTER_CAP = 3600.0  # as read; RetryingStore waits at most its own max_retry_after
_MESSAGES = {
    "grant revoked": "the storage grant was revoked; ask the portal for a new one",
    "grant expired": "the storage grant has expired; ask the portal for a new one",
    "unauthorized": "the portal storage asked for a grant and none was sent",
}


_LIVE: weakref.WeakSet[HttpGrantStore] = weakref.WeakSet()


def _own_sessions_in_child() -> None:
    """After a fork the child must not share the parent's pooled connections (two processes
    on one socket garble both): it forgets the inherited sessions and opens its own."""
    for store in list(_LIVE):
        store._local = threading.local()
        store._sessions = []
        store._sessions_lock = threading.Lock()


os.register_at_fork(after_in_child=_own_sessions_in_child)


class HttpGrantStore(BlobStore):
    """One container served by the portal. Each thread gets its own ``requests.Session``
    (sessions are not documented as thread-safe); all of them are closed by ``close``. A
    forked child opens sessions of its own, so restores may read it from several processes."""

    fork_safe_reads = True

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        expires_at: datetime | None = None,
        proxies: dict[str, str] | None = None,
        timeout: tuple[float, float] = (10, 120),
        verify: bool | str = True,
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(f"the storage URL {base_url!r} is not an http(s) URL")
        self.base_url = base_url
        self.endpoint = parts.netloc
        self.expires_at = expires_at
        self.proxies = dict(proxies) if proxies else None
        self.timeout = timeout
        self.verify = verify
        self._token = token
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        _LIVE.add(self)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Authorization"] = f"{AUTH_SCHEME} {self._token}"
            session.headers["User-Agent"] = "haven-agent"
            if self.proxies:
                session.proxies.update(self.proxies)
            session.verify = self.verify
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _request(
        self,
        method: str,
        name: str | None,
        *,
        action: str,
        ok: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> requests.Response:
        if self.expires_at is not None and datetime.now(UTC) >= self.expires_at:
            raise GrantExpired(
                f"the storage grant expired at {self.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
                "ask the portal for a new one"
            )
        url = self.base_url + (quote(name, safe="/") if name else "")
        try:
            response = self._session().request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise StorageUnavailable(
                f"the Haven portal storage at {self.endpoint} did not answer: {network_reason(exc)}"
            ) from None
        if response.status_code not in ok:
            raise self._error(response, action, name)
        return response

    def _error(self, response: requests.Response, action: str, name: str | None) -> StorageError:
        status = response.status_code
        code, message = "", ""
        try:
            body = response.json()
            code, message = str(body.get("error", "")), str(body.get("message", ""))
        except (ValueError, AttributeError):
            # HEAD answers carry no body; the error code comes in a header.
            code = response.headers.get("X-Haven-Error", "")
            message = _MESSAGES.get(code, "")
        what = repr(name) if name else "the container"
        if status == 404:
            if code == "container not found" or not name:
                return ContainerNotFound(
                    message or f"the container at {self.base_url} does not exist"
                )
            return BlobNotFound(name)
        if status in (401, 403):
            if code == "grant expired" or (
                self.expires_at is not None and datetime.now(UTC) >= self.expires_at
            ):
                return GrantExpired(
                    message or "the storage grant has expired; ask the portal for a new one"
                )
            return BlobForbidden(
                message or f"the storage grant does not allow you to {action} {what}"
            )
        if status == 409 and code == "blob exists" and name:
            return BlobExists(name)
        if status == 400 and code == "invalid name":
            return InvalidBlobName(message)
        if status in (408, 429) or status >= 500:
            # A busy portal says when to come back; the retry wrapper bounds the wait.
            retry_after = (
                retry_after_seconds(response.headers.get("Retry-After"), cap=RETRY_AFTER_CAP)
                if status in RETRY_AFTER_STATUSES
                else None
            )
            return StorageUnavailable(
                f"the Haven portal storage at {self.endpoint} could not {action} {what} right now "
                f"({status}{': ' + message if message else ''}); try again later",
                retry_after=retry_after,
            )
        return StorageError(
            f"the Haven portal storage refused to {action} {what}: {status} {message or response.reason}"
        )

    def put(self, name: str, data: bytes | memoryview) -> None:
        check_name(name)
        body = data if isinstance(data, bytes) else memoryview(data).cast("B")
        self._request(
            "PUT",
            name,
            action="write",
            ok=(200, 201, 204),
            data=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(body))},
        )

    def get(self, name: str) -> bytes:
        check_name(name)
        return self._request("GET", name, action="read").content

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        check_name(name)
        check_range(offset, length)
        if length == 0:
            if not self.exists(name):
                raise BlobNotFound(name)
            return b""
        response = self._request(
            "GET",
            name,
            action="read",
            ok=(200, 206, 416),
            headers={"Range": f"bytes={offset}-{offset + length - 1}"},
        )
        if response.status_code == 416:  # the range starts at or past the end
            return b""
        if response.status_code == 200:  # a server that ignored Range
            return response.content[offset : offset + length]
        return response.content

    def exists(self, name: str) -> bool:
        check_name(name)
        response = self._request("HEAD", name, action="read", ok=(200, 404))
        return response.status_code == 200

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        marker = ""
        while True:
            params = {"prefix": prefix}
            if marker:
                params["marker"] = marker
            body = self._request("GET", None, action="list", params=params).json()
            for blob in body["blobs"]:
                yield BlobInfo(
                    name=blob["name"],
                    size=int(blob["size"]),
                    modified=datetime.fromisoformat(blob["modified"]),
                )
            marker = body.get("next_marker") or ""
            if not marker:
                return

    def delete(self, name: str) -> None:
        check_name(name)
        self._request("DELETE", name, action="delete", ok=(200, 204))

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def __repr__(self) -> str:  # never the token
        return f"HttpGrantStore({self.base_url!r})"
