"""Azure Blob Storage (and Azurite) through azure-storage-blob's ``ContainerClient``.

Two ways in: the portal opens a container with the account's connection string (full
rights, for provisioning and garbage collection); an agent opens it from a container URL
and a SAS grant (no delete). Every SDK error is translated into this package's errors.

Every blob goes up in one ``Put Blob`` with ``If-None-Match: *``: it is created whole or
not at all, and never overwritten. Agents' grants allow create (``c``) but not write
(``w``): Azure and Azurite refuse an overwrite through such a SAS (403), and Azurite also
refuses ``Put Block``/``Put Block List`` without ``w``, which is why packs are not staged
as blocks (docs/storage-backends.md). ``If-None-Match: *`` makes the refusal the same
(409) when the credentials could overwrite (the portal's account key).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import ContainerClient, ExponentialRetry

from agents.runtime.blobstore._common import check_name, check_range, network_reason
from agents.runtime.blobstore.base import (
    BlobExists,
    BlobForbidden,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    ContainerNotFound,
    GrantExpired,
    StorageError,
    StorageUnavailable,
)

MiB = 1024 * 1024
# Every blob goes in one Put Blob (Azure takes up to 5000 MiB in one; packs are ~16 MiB):
# staged blocks need the write permission that agents' grants no longer carry.
MAX_SINGLE_PUT_SIZE = 5000 * MiB
MAX_BLOCK_SIZE = 4 * MiB
MAX_SINGLE_GET_SIZE = 8 * MiB
MAX_CHUNK_GET_SIZE = 4 * MiB


def client_options(
    *,
    proxies: dict[str, str] | None = None,
    retries: int = 2,
    connection_timeout: float = 10,
    read_timeout: float = 120,
) -> dict[str, Any]:
    """Keyword arguments for azure-storage-blob clients: short connect timeout, a few quick
    SDK retries (``RetryingStore`` adds patient ones on top), block sizes for packs."""
    options = {
        "retry_policy": ExponentialRetry(
            initial_backoff=1, increment_base=2, retry_total=retries, random_jitter_range=1
        ),
        "connection_timeout": connection_timeout,
        "read_timeout": read_timeout,
        "max_single_put_size": MAX_SINGLE_PUT_SIZE,
        "max_block_size": MAX_BLOCK_SIZE,
        "max_single_get_size": MAX_SINGLE_GET_SIZE,
        "max_chunk_get_size": MAX_CHUNK_GET_SIZE,
    }
    if proxies:
        options["proxies"] = dict(proxies)
    return options


def endpoint_of(url: str) -> str:
    """``host:port`` of a storage URL, for messages (never the query, which holds a SAS)."""
    parts = urlsplit(url)
    return parts.netloc or url.split("?", 1)[0]


def translate_error(
    exc: AzureError,
    *,
    action: str,
    container: str,
    endpoint: str,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> StorageError:
    """The package error for an SDK error, with a message a person can act on."""
    where = f"Azure Storage at {endpoint}"
    what = f"{name!r} in container {container!r}" if name else f"container {container!r}"
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return StorageUnavailable(f"{where} did not answer: {network_reason(exc)}")
    if not isinstance(exc, HttpResponseError):
        return StorageUnavailable(f"{where} failed to {action} {what}: {network_reason(exc)}")
    status = exc.status_code or 0
    code = str(getattr(exc, "error_code", None) or "")
    code = code.removeprefix("StorageErrorCode.")
    if status == 404:
        if code in ("ContainerNotFound", "container_not_found") or not name:
            return ContainerNotFound(f"container {container!r} does not exist at {where}")
        return BlobNotFound(name)
    if status in (401, 403):
        if expires_at is not None and datetime.now(UTC) >= expires_at:
            return GrantExpired(
                f"the storage grant for container {container!r} expired at "
                f"{expires_at:%Y-%m-%d %H:%M:%S} UTC; ask the portal for a new one"
            )
        if code.lower() in ("authorizationpermissionmismatch", "authorization_permission_mismatch"):
            return BlobForbidden(f"the storage grant does not allow you to {action} {what}")
        return BlobForbidden(
            f"{where} refused the credentials for {what} ({code or status}): the grant was "
            "revoked or has expired, or the account key is wrong"
        )
    if status == 409 and "beingdeleted" in code.lower().replace("_", ""):
        return StorageUnavailable(
            f"container {container!r} is being deleted at {where}; try again in a minute"
        )
    if status in (408, 429) or status >= 500:
        return StorageUnavailable(
            f"{where} could not {action} {what} right now ({status} {code}); try again later"
        )
    return StorageError(f"{where} refused to {action} {what}: {status} {code}".rstrip())


class AzureBlobStore(BlobStore):
    """One Azure container. ``expires_at`` (for SAS grants) turns 403s after that moment
    into ``GrantExpired`` so the caller knows to renew rather than give up."""

    def __init__(
        self,
        container: ContainerClient,
        *,
        expires_at: datetime | None = None,
        max_concurrency: int = 4,
    ) -> None:
        self._container = container
        self.container_name = container.container_name
        self.endpoint = endpoint_of(container.url)
        self.expires_at = expires_at
        self.max_concurrency = max_concurrency

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        container: str,
        *,
        proxies: dict[str, str] | None = None,
        retries: int = 2,
        connection_timeout: float = 10,
        read_timeout: float = 120,
        max_concurrency: int = 4,
    ) -> AzureBlobStore:
        try:
            client = ContainerClient.from_connection_string(
                connection_string,
                container,
                **client_options(
                    proxies=proxies,
                    retries=retries,
                    connection_timeout=connection_timeout,
                    read_timeout=read_timeout,
                ),
            )
        except ValueError as exc:
            raise StorageError(
                f"the Azure Storage connection string is not usable: {exc}"
            ) from None
        return cls(client, max_concurrency=max_concurrency)

    @classmethod
    def from_container_url(
        cls,
        container_url: str,
        *,
        sas: str | None = None,
        expires_at: datetime | None = None,
        proxies: dict[str, str] | None = None,
        retries: int = 2,
        connection_timeout: float = 10,
        read_timeout: float = 120,
        max_concurrency: int = 4,
    ) -> AzureBlobStore:
        """From ``https://account.blob.core.windows.net/container`` and a SAS (without the
        leading ``?``), or from a URL that already carries the SAS in its query."""
        try:
            client = ContainerClient.from_container_url(
                container_url,
                credential=sas.lstrip("?") if sas else None,
                **client_options(
                    proxies=proxies,
                    retries=retries,
                    connection_timeout=connection_timeout,
                    read_timeout=read_timeout,
                ),
            )
        except ValueError as exc:
            raise StorageError(
                f"the container URL {container_url.split('?', 1)[0]!r} is not usable: {exc}"
            ) from None
        return cls(client, expires_at=expires_at, max_concurrency=max_concurrency)

    def _check_expiry(self) -> None:
        # Refuse before asking: Azure would answer 403 anyway, and Azurite (3.35) does not
        # enforce a SAS's own expiry when the SAS names a stored access policy.
        if self.expires_at is not None and datetime.now(UTC) >= self.expires_at:
            raise GrantExpired(
                f"the storage grant for container {self.container_name!r} expired at "
                f"{self.expires_at:%Y-%m-%d %H:%M:%S} UTC; ask the portal for a new one"
            )

    def _error(self, exc: AzureError, action: str, name: str | None = None) -> StorageError:
        return translate_error(
            exc,
            action=action,
            container=self.container_name,
            endpoint=self.endpoint,
            name=name,
            expires_at=self.expires_at,
        )

    def put(self, name: str, data: bytes | memoryview) -> None:
        check_name(name)
        self._check_expiry()
        body = data if isinstance(data, bytes) else bytes(data)  # the SDK iterates memoryviews
        if len(body) > MAX_SINGLE_PUT_SIZE:
            raise StorageError(
                f"blob {name!r} is {len(body)} bytes; Azure takes at most "
                f"{MAX_SINGLE_PUT_SIZE} in one create"
            )
        try:
            # overwrite=False sends If-None-Match: * (409 BlobAlreadyExists on a name in use).
            self._container.upload_blob(
                name,
                body,
                length=len(body),
                overwrite=False,
                max_concurrency=self.max_concurrency,
            )
        except HttpResponseError as exc:
            # 409: the name is taken. 403: taken too, when the SAS lacks write (Azure checks
            # the permission before the condition). Either may be our own earlier try that
            # landed before its answer was lost (the SDK retries), which is a success.
            if exc.status_code in (403, 409) and self._holds(name, body):
                return
            if (
                exc.status_code == 409
                and "alreadyexists" in str(getattr(exc, "error_code", "")).lower()
            ):
                raise BlobExists(name) from None
            if exc.status_code == 403 and self._exists_quietly(name):
                raise BlobExists(name) from None
            raise self._error(exc, "write", name) from exc
        except AzureError as exc:
            raise self._error(exc, "write", name) from exc

    def _exists_quietly(self, name: str) -> bool:
        try:
            return bool(self._container.get_blob_client(name).exists())
        except AzureError:
            return False

    def _holds(self, name: str, body: bytes) -> bool:
        """Whether blob ``name`` holds exactly ``body`` (False when it cannot be read)."""
        try:
            blob = self._container.get_blob_client(name)
            if blob.get_blob_properties().size != len(body):
                return False
            return bool(blob.download_blob(max_concurrency=self.max_concurrency).readall() == body)
        except AzureError:
            return False

    def get(self, name: str) -> bytes:
        check_name(name)
        self._check_expiry()
        try:
            return self._container.download_blob(
                name, max_concurrency=self.max_concurrency
            ).readall()
        except AzureError as exc:
            raise self._error(exc, "read", name) from exc

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        check_name(name)
        self._check_expiry()
        check_range(offset, length)
        if length == 0:
            if not self.exists(name):
                raise BlobNotFound(name)
            return b""
        try:
            return self._container.download_blob(
                name, offset=offset, length=length, max_concurrency=self.max_concurrency
            ).readall()
        except HttpResponseError as exc:
            if exc.status_code == 416:  # the range starts at or past the end
                return b""
            raise self._error(exc, "read", name) from exc
        except AzureError as exc:
            raise self._error(exc, "read", name) from exc

    def exists(self, name: str) -> bool:
        check_name(name)
        self._check_expiry()
        try:
            return self._container.get_blob_client(name).exists()
        except AzureError as exc:
            raise self._error(exc, "read", name) from exc

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        self._check_expiry()
        try:
            pages = self._container.list_blobs(name_starts_with=prefix or None)
            for blob in pages:
                yield BlobInfo(name=blob.name, size=blob.size, modified=blob.last_modified)
        except AzureError as exc:
            raise self._error(exc, "list") from exc

    def delete(self, name: str) -> None:
        check_name(name)
        self._check_expiry()
        try:
            self._container.delete_blob(name)
        except AzureError as exc:
            raise self._error(exc, "delete", name) from exc

    def close(self) -> None:
        self._container.close()

    def __repr__(self) -> str:
        return f"AzureBlobStore({self.endpoint}/{self.container_name})"
