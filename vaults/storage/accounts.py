"""Storage accounts: where vault containers live, and who may touch them.

``primary_account()`` is Azure Blob when ``AZURE_STORAGE_CONNECTION_STRING`` is set, else the
local directory ``STORAGE_DIR``. ``secondary_account()`` holds the GRS copy, or is None when the
operator configured none: a second Azure account when
``HAVEN_SECONDARY_STORAGE_CONNECTION_STRING`` is set, else (local primary only) the directory
``SECONDARY_STORAGE_DIR``. A secondary is always another place, never the primary's own
account or directory under another name: a copy beside the original protects nothing.

Container names are the logical names the rest of the portal uses (Azure's rules: 3–63
lowercase letters, digits and single hyphens); an account maps them to physical ones.
The portal holds full rights (``store``); agents get grants to create, read and list:
no delete, and no overwrite (no backend overwrites a blob; on Azure the ``w`` permission
is never granted, docs/storage-backends.md).
"""

from __future__ import annotations

import abc
import functools
import os
import re
import secrets
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import (
    AccessPolicy,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_container_sas,
)
from django.conf import settings
from django.urls import reverse

from agents.runtime.blobstore import (
    BlobStore,
    ContainerNotFound,
    StorageError,
    StorageUnavailable,
)
from agents.runtime.blobstore.azure import (
    AzureBlobStore,
    client_options,
    endpoint_of,
    translate_error,
)
from agents.runtime.blobstore.local import FILE_MODE, FOLDER_MODE, RESERVED, LocalDirectoryStore

PERMISSIONS = "rcld"  # read, create, list, delete — in this order; never w (overwrite)
AGENT_PERMISSIONS = "rcl"
GENERATION_FILE = "grant-generation"
# Azure allows five stored access policies per container: one per permission set.
MAX_POLICIES = 5
POLICY_PREFIX = "haven-"
_CONTAINER_RE = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class InvalidContainerName(StorageError, ValueError):
    """A container name Azure (and so Haven, on every backend) does not accept."""


def check_container_name(name: str) -> str:
    if not isinstance(name, str) or not _CONTAINER_RE.match(name):
        raise InvalidContainerName(
            f"container name {name!r} is not valid: use 3 to 63 lowercase letters, digits and "
            "hyphens, starting and ending with a letter or digit, without '--'"
        )
    return name


def normalize_permissions(permissions: str) -> str:
    """``permissions`` in canonical order; raises ValueError for unknown letters."""
    unknown = set(permissions) - set(PERMISSIONS)
    if unknown or not permissions:
        raise ValueError(
            f"permissions {permissions!r} must be letters from {PERMISSIONS!r} "
            "(read, create, list, delete; blobs are never overwritten)"
        )
    return "".join(letter for letter in PERMISSIONS if letter in permissions)


def _check_expiry(expires_at: datetime) -> datetime:
    if not isinstance(expires_at, datetime) or expires_at.tzinfo is None:
        raise ValueError("expires_at must be a timezone-aware datetime")
    return expires_at.astimezone(UTC).replace(microsecond=0)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(text)


class StorageAccount(abc.ABC):
    """One place containers live. ``role`` is "primary" or "secondary"."""

    kind: str
    role: str
    suffix: str

    def physical_name(self, name: str) -> str:
        return check_container_name(check_container_name(name) + self.suffix)

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this account is, for messages and the admin pages (no secrets)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raises ``StorageUnavailable`` (or ``BlobForbidden``) when the account is unusable."""

    @abc.abstractmethod
    def create_container(self, name: str) -> None:
        """Create the container (idempotent) and prepare it for grants."""

    @abc.abstractmethod
    def delete_container(self, name: str) -> None:
        """Remove the container and every blob in it; nothing happens when it is absent."""

    @abc.abstractmethod
    def container_exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def store(self, name: str) -> BlobStore:
        """Full rights on the container (delete included), for the portal's own work."""

    def usage(self, name: str) -> int:
        """Bytes stored in the container."""
        with self.store(name) as store:
            return sum(info.size for info in store.list())

    @abc.abstractmethod
    def issue_grant(
        self, container: str, *, expires_at: datetime, permissions: str = AGENT_PERMISSIONS
    ) -> dict:
        """A JSON-able grant for an agent (docs/storage-backends.md); ``open_grant`` opens it."""

    @abc.abstractmethod
    def revoke_grants(self, container: str) -> None:
        """Invalidate every grant issued so far for the container, at once."""


# --- Local directory ----------------------------------------------------------------------
class LocalStorageAccount(StorageAccount):
    kind = "local"

    def __init__(self, root: str | os.PathLike[str], *, role: str = "primary", suffix: str = ""):
        self.root = Path(root)
        self.role = role
        self.suffix = suffix

    def describe(self) -> str:
        return f"local directory {self.root}"

    def directory(self, name: str) -> Path:
        return self.root / self.physical_name(name)

    def ping(self) -> None:
        try:
            self.root.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
            probe = self.root / f".ping-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageUnavailable(
                f"the storage directory {self.root} is not usable: {exc.strerror or exc}"
            ) from None

    def create_container(self, name: str) -> None:
        folder = self.directory(name)
        try:
            # 0700 all the way down (blobs are 0600): nobody but the portal's account reads.
            self.root.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
            folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
            (folder / RESERVED).mkdir(mode=FOLDER_MODE, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(
                f"could not create the container directory {folder}: {exc.strerror or exc}"
            ) from None
        self.generation(name)

    def delete_container(self, name: str) -> None:
        folder = self.directory(name)
        # Rename first, so a half-deleted container never looks like a live one.
        trash = self.root / f".deleting-{folder.name}-{uuid.uuid4().hex}"
        try:
            folder.rename(trash)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(
                f"could not delete the container directory {folder}: {exc}"
            ) from None
        shutil.rmtree(trash, ignore_errors=True)

    def container_exists(self, name: str) -> bool:
        return self.directory(name).is_dir()

    def store(self, name: str) -> LocalDirectoryStore:
        return LocalDirectoryStore(self.directory(name))

    def usage(self, name: str) -> int:
        return self.store(name).usage()

    # Grants: the generation is a random id, replaced on revocation.
    def _generation_path(self, name: str) -> Path:
        return self.directory(name) / RESERVED / GENERATION_FILE

    def generation(self, name: str) -> str:
        """The container's current grant generation (created on first use)."""
        path = self._generation_path(name)
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        if not self.container_exists(name):
            raise ContainerNotFound(f"container {name!r} does not exist in {self.describe()}")
        # Create-if-absent atomically: link() fails when another process got there first.
        path.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        tmp = path.with_name(f"{GENERATION_FILE}.{uuid.uuid4().hex}.tmp")
        _write_private(tmp, secrets.token_hex(16))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_text().strip()

    def revoke_grants(self, container: str) -> None:
        if not self.container_exists(container):
            raise ContainerNotFound(f"container {container!r} does not exist in {self.describe()}")
        path = self._generation_path(container)
        path.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        tmp = path.with_name(f"{GENERATION_FILE}.{uuid.uuid4().hex}.tmp")
        _write_private(tmp, secrets.token_hex(16))
        os.replace(tmp, path)

    def issue_grant(
        self, container: str, *, expires_at: datetime, permissions: str = AGENT_PERMISSIONS
    ) -> dict:
        from vaults.storage.tokens import sign_grant

        permissions = normalize_permissions(permissions)
        expires_at = _check_expiry(expires_at)
        token = sign_grant(
            container=container,
            account=self.role,
            permissions=permissions,
            expires_at=expires_at,
            generation=self.generation(container),
        )
        path = reverse("storage:container", kwargs={"container": container})
        return {
            "kind": "haven-http",
            "container": container,
            "base_url": settings.HAVEN_PUBLIC_URL.rstrip("/") + path,
            "token": token,
            "permissions": permissions,
            "expires_at": expires_at.isoformat(),
        }

    def __repr__(self) -> str:
        return (
            f"LocalStorageAccount({str(self.root)!r}, role={self.role!r}, suffix={self.suffix!r})"
        )


# --- Azure Blob -----------------------------------------------------------------------------
class AzureStorageAccount(StorageAccount):
    kind = "azure"

    def __init__(self, connection_string: str, *, role: str = "primary", suffix: str = ""):
        self.role = role
        self.suffix = suffix
        try:
            self.service = BlobServiceClient.from_connection_string(
                connection_string, **client_options()
            )
            # Ping fails fast: one try, short timeout (a person is waiting for the answer).
            self._ping_service = BlobServiceClient.from_connection_string(
                connection_string,
                **client_options(retries=0, connection_timeout=5, read_timeout=10),
            )
        except ValueError as exc:
            raise StorageError(f"AZURE_STORAGE_CONNECTION_STRING is not usable: {exc}") from None
        self.endpoint = endpoint_of(self.service.url)

    def describe(self) -> str:
        return f"Azure Storage at {self.endpoint} (account {self.service.account_name})"

    def sku(self) -> str:
        """The account's own replication SKU as Azure reports it (``Standard_ZRS`` …)."""
        try:
            info = self._ping_service.get_account_information()
        except AzureError as exc:
            raise translate_error(
                exc, action="answer", container="(account)", endpoint=self.endpoint
            ) from None
        return str(info.get("sku_name") or "")

    def _error(self, exc: AzureError, action: str, name: str) -> StorageError:
        return translate_error(exc, action=action, container=name, endpoint=self.endpoint)

    def ping(self) -> None:
        try:
            self._ping_service.get_account_information()
        except AzureError as exc:
            error = translate_error(
                exc, action="answer", container="(account)", endpoint=self.endpoint
            )
            if isinstance(error, ContainerNotFound):
                error = StorageUnavailable(f"{self.describe()} answered 404: is the URL right?")
            raise error from None

    def _container(self, name: str):
        return self.service.get_container_client(self.physical_name(name))

    def create_container(self, name: str) -> None:
        client = self._container(name)
        try:
            client.create_container()
        except ResourceExistsError as exc:
            if "BeingDeleted" in str(getattr(exc, "error_code", "")):
                raise self._error(exc, "create", name) from exc
        except AzureError as exc:
            raise self._error(exc, "create", name) from exc
        # Create the grant policy now, not on the first grant: on Azure a new stored
        # access policy can take up to 30 s to be honoured.
        self._policy_id(name, AGENT_PERMISSIONS)

    def delete_container(self, name: str) -> None:
        try:
            self._container(name).delete_container()
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise self._error(exc, "delete", name) from exc

    def container_exists(self, name: str) -> bool:
        try:
            return self._container(name).exists()
        except AzureError as exc:
            raise self._error(exc, "find", name) from exc

    def store(self, name: str) -> AzureBlobStore:
        return AzureBlobStore(self._container(name))

    # Grants: container SAS tied to a stored access policy that carries the permissions,
    # so replacing the policy's id (revoke_grants) invalidates every SAS issued under it.
    def _policies(self, name: str) -> dict[str, AccessPolicy]:
        try:
            found = self._container(name).get_container_access_policy()
        except AzureError as exc:
            raise self._error(exc, "read the access policies of", name) from exc
        return {ident.id: ident.access_policy for ident in found["signed_identifiers"]}

    def _set_policies(self, name: str, policies: dict[str, AccessPolicy]) -> None:
        try:
            self._container(name).set_container_access_policy(signed_identifiers=policies)
        except AzureError as exc:
            raise self._error(exc, "set the access policies of", name) from exc

    @staticmethod
    def _policy_name(permissions: str) -> str:
        return f"{POLICY_PREFIX}{permissions}-{secrets.token_hex(8)}"

    @staticmethod
    def _policy_permissions(ident: str) -> str:
        return ident[len(POLICY_PREFIX) :].rsplit("-", 1)[0]

    def _policy_id(self, name: str, permissions: str) -> str:
        policies = self._policies(name)
        # Policies that grant write (overwrite), from before grants became create-only, are
        # dropped: every SAS issued under them stops working, so no old grant overwrites.
        retired = [
            ident
            for ident in policies
            if ident.startswith(POLICY_PREFIX) and "w" in self._policy_permissions(ident)
        ]
        for ident in retired:
            del policies[ident]
        prefix = f"{POLICY_PREFIX}{permissions}-"
        for ident in policies:
            if ident.startswith(prefix):
                if retired:
                    self._set_policies(name, policies)
                return ident
        if len(policies) >= MAX_POLICIES:
            raise StorageError(
                f"container {name!r} already has {MAX_POLICIES} stored access policies (Azure's "
                f"limit); cannot add one for permissions {permissions!r}"
            )
        ident = self._policy_name(permissions)
        policies[ident] = AccessPolicy(permission=ContainerSasPermissions.from_string(permissions))
        self._set_policies(name, policies)
        return ident

    def issue_grant(
        self, container: str, *, expires_at: datetime, permissions: str = AGENT_PERMISSIONS
    ) -> dict:
        permissions = normalize_permissions(permissions)
        expires_at = _check_expiry(expires_at)
        credential = self.service.credential
        account_key = getattr(credential, "account_key", None)
        if not account_key:
            raise StorageError(
                "AZURE_STORAGE_CONNECTION_STRING must carry an AccountKey for the portal to "
                "issue storage grants (a connection string with a SAS cannot sign new ones)"
            )
        policy_id = self._policy_id(container, permissions)
        client = self._container(container)
        sas = generate_container_sas(
            self.service.account_name,
            client.container_name,
            account_key=account_key,
            policy_id=policy_id,
            expiry=expires_at,
            # Tolerate agents whose clock runs a little behind.
            start=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=15),
        )
        return {
            "kind": "azure-sas",
            "container": container,
            "container_url": client.url,
            "sas": sas,
            "permissions": permissions,
            "expires_at": expires_at.isoformat(),
        }

    def revoke_grants(self, container: str) -> None:
        policies = self._policies(container)
        renewed: dict[str, AccessPolicy] = {}
        for ident, policy in policies.items():
            if ident.startswith(POLICY_PREFIX):
                ident = self._policy_name(self._policy_permissions(ident))
            renewed[ident] = policy
        if renewed != policies:
            self._set_policies(container, renewed)

    def close(self) -> None:
        self.service.close()
        self._ping_service.close()

    def __repr__(self) -> str:
        return f"AzureStorageAccount({self.endpoint!r}, role={self.role!r}, suffix={self.suffix!r})"


# --- Choosing from settings -------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _azure_account(connection_string: str, role: str, suffix: str) -> AzureStorageAccount:
    # One client (and connection pool) per configuration, shared by every request.
    return AzureStorageAccount(connection_string, role=role, suffix=suffix)


def primary_account() -> StorageAccount:
    """Azure when ``AZURE_STORAGE_CONNECTION_STRING`` is set, else ``STORAGE_DIR``."""
    connection_string = getattr(settings, "AZURE_STORAGE_CONNECTION_STRING", None)
    if connection_string:
        return _azure_account(connection_string, "primary", "")
    return LocalStorageAccount(settings.STORAGE_DIR, role="primary")


def secondary_account() -> StorageAccount | None:
    """Where GRS copies go (see the module docstring); None when none is configured."""
    connection_string = getattr(settings, "SECONDARY_STORAGE_CONNECTION_STRING", None)
    if connection_string:
        return _azure_account(connection_string, "secondary", "")
    if getattr(settings, "AZURE_STORAGE_CONNECTION_STRING", None):
        return None  # an Azure primary needs a second Azure account
    folder = getattr(settings, "SECONDARY_STORAGE_DIR", None)
    if not folder or str(folder) in ("", "."):
        return None
    if Path(folder).expanduser().resolve() == Path(settings.STORAGE_DIR).expanduser().resolve():
        return None  # the primary's own directory is no second copy
    return LocalStorageAccount(folder, role="secondary")


def secondary_unavailable_reason() -> str:
    """Why geo-redundant storage cannot work on this portal ("" when it can)."""
    if secondary_account() is not None:
        return ""
    if getattr(settings, "AZURE_STORAGE_CONNECTION_STRING", None):
        return (
            "No secondary storage account is configured on this portal: the operator sets "
            "HAVEN_SECONDARY_STORAGE_CONNECTION_STRING to a second Azure storage account."
        )
    return (
        "No secondary storage is configured on this portal: the operator sets "
        "HAVEN_SECONDARY_STORAGE_DIR to a second directory (another disk) or "
        "HAVEN_SECONDARY_STORAGE_CONNECTION_STRING to an Azure storage account."
    )


def zone_redundancy_reason() -> str:
    """Why zone-redundant storage is not offered ("" when the primary account is itself
    zone-redundant: Azure keeps three copies across zones; Haven copies nothing more)."""
    account = primary_account()
    if not isinstance(account, AzureStorageAccount):
        return (
            "The vault storage is a local directory, which has no availability zones. "
            "Zone-redundant storage needs an Azure storage account whose own redundancy is ZRS."
        )
    try:
        sku = account.sku()
    except StorageError as exc:
        return f"The storage account's redundancy could not be read: {exc}"
    if "ZRS" in sku.upper():  # Standard_ZRS, Premium_ZRS, Standard_GZRS, Standard_RAGZRS
        return ""
    return (
        f"The portal's storage account is {sku or 'of an unknown kind'}, not zone-redundant. "
        "Zone-redundant storage needs an Azure storage account whose own redundancy is ZRS."
    )


# The portal's own scratch container for Recover Data downloads (jobs.recovery.services):
# in the primary account, so every portal process reads what another one received. Vault
# and machine containers are named vault-… and machine-…, never this.
DOWNLOADS_CONTAINER = "haven-downloads"
_downloads_ready: dict[str, bool] = {}  # per account: created once per process


def downloads_store() -> BlobStore:
    """Full rights on the downloads container, created on first use."""
    account = primary_account()
    if not _downloads_ready.get(repr(account)):
        account.create_container(DOWNLOADS_CONTAINER)
        _downloads_ready[repr(account)] = True
    return account.store(DOWNLOADS_CONTAINER)


def account_for_role(role: str) -> StorageAccount:
    if role == "primary":
        return primary_account()
    if role == "secondary":
        account = secondary_account()
        if account is None:
            raise ValueError("no secondary storage is configured on this portal")
        return account
    raise ValueError(f"unknown storage account role {role!r}")
