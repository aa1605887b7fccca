"""Registering this machine to a vault (the reference's Register Server Wizard).

``prepare`` reads the vault credentials and checks them against the portal's identity
before anything else is sent; ``enroll`` then asks the portal to create the machine, checks
the broker and storage it was given, initialises the machine's repository in storage (the
master key wrapped by a key derived from the passphrase), and only then writes the
registration to the config directory. When a step after the portal's answer fails, the
portal is asked to drop the new machine again, so nothing stays half-registered.

The passphrase goes to ``Repository.init`` and nowhere else: no request or message carries
it or anything derived from it except the wrapped key in storage.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.runtime import checks, host
from agents.runtime.blobstore.base import BlobStore, StorageError
from agents.runtime.config import (
    ConfigError,
    Registration,
    Settings,
    load_registration,
    save_registration,
)
from agents.runtime.credentials import (
    ERRORS_BY_CODE,
    CredentialsError,
    CredentialsMalformed,
    VaultCredentials,
    parse,
    verify,
)
from agents.runtime.engine.repository import Repository
from agents.runtime.portal_api import PortalClient, PortalRefused
from agents.runtime.storage_grant import open_store
from agents.runtime.version import __version__

#: ``Repository.init`` or a test's stand-in: ``init(store, passphrase)``; the result's ``id``
#: is recorded when it has one.
RepositoryInit = Callable[["BlobStore", str], object]


class RegistrationError(Exception):
    """Registration cannot go on; the message says why and what to do."""


class AlreadyRegistered(RegistrationError):
    pass


class MachineNameTaken(RegistrationError):
    pass


class BrokerUnreachable(RegistrationError):
    pass


class StorageUnreachable(RegistrationError):
    pass


class RegistrationRefused(RegistrationError):
    pass


@dataclass
class Prepared:
    credentials: VaultCredentials
    identity: dict[str, Any]


def read_credentials_file(path: str | Path) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise CredentialsMalformed(
            f"cannot read the vault credentials file {path}: {exc.strerror}"
        ) from None


def prepare(credentials_path: str | Path, settings: Settings) -> Prepared:
    """Read and verify the credentials against the portal they name (raises
    ``CredentialsError`` subclasses or ``PortalUnreachable``)."""
    creds = parse(read_credentials_file(credentials_path))
    client = PortalClient(creds.portal_url, proxies=settings.proxies())
    try:
        identity = client.identity()
    finally:
        client.close()
    verify(creds, public_key_b64=identity["public_key"])
    return Prepared(credentials=creds, identity=identity)


def default_machine_name() -> str:
    return socket.gethostname().split(".")[0] or "machine"


def local_time_zone() -> str:
    try:
        target = Path("/etc/localtime").resolve()
        parts = target.parts
        if "zoneinfo" in parts:
            return "/".join(parts[parts.index("zoneinfo") + 1 :]) or "UTC"
    except OSError:
        pass
    tz = Path("/etc/timezone")
    if tz.exists():
        return tz.read_text().strip() or "UTC"
    return "UTC"


def check_existing(directory: Path | None, *, replace: bool) -> Registration | None:
    existing = load_registration(directory)
    if existing is not None and not replace:
        raise AlreadyRegistered(
            f"this machine is already registered as {existing.machine_name!r} to vault "
            f"{existing.vault_name!r} on {existing.portal_url}. To register it again, pass "
            "--replace with vault credentials downloaded by a Contributor or Owner: the "
            "earlier registration is unregistered (its backups stay in the vault until "
            "retention removes them)."
        )
    return existing


def _raise_for_refusal(exc: PortalRefused) -> None:
    error = ERRORS_BY_CODE.get(exc.code)
    if error is not None:
        raise error(str(exc)) from None
    if exc.code == "name_taken":
        raise MachineNameTaken(str(exc)) from None
    raise RegistrationRefused(f"the portal refused the registration: {exc}") from None


def _rollback(client: PortalClient, reason: str) -> str:
    """Ask the portal to drop the machine just created; returns a note for the error.

    The portal deletes only a registration that holds nothing (no job, no recovery point,
    no blob in its container); for one that does it answers ``rollback_refused`` and the
    machine is unregistered instead, its storage kept."""
    try:
        client.post("unregister/", {"reason": reason, "rollback": True})
    except PortalRefused as exc:
        if exc.code != "rollback_refused":
            return _not_told(exc)
        try:
            client.post("unregister/", {"reason": reason})
        except Exception as again:  # the portal may be the thing that went away
            return _not_told(again)
        return " The new registration was unregistered; what it wrote to storage is kept."
    except Exception as exc:  # the portal may be the thing that went away
        return _not_told(exc)
    return " Nothing was registered."


def _not_told(exc: Exception) -> str:
    return (
        f" The portal could not be told to drop the new registration ({exc}); "
        "unregister the machine in the portal (Backup Infrastructure › Protected "
        "servers) before trying again."
    )


def enroll(
    prepared: Prepared,
    *,
    passphrase: str,
    settings: Settings,
    machine_name: str = "",
    replace: bool = False,
    directory: Path | None = None,
    store_opener: checks.StoreOpener | None = None,
    repository_init: RepositoryInit | None = None,
) -> Registration:
    existing = check_existing(directory, replace=replace)
    creds = prepared.credentials
    name = (machine_name or default_machine_name()).strip()
    proxies = settings.proxies()
    anonymous = PortalClient(creds.portal_url, proxies=proxies)
    payload = {
        "credentials": creds.raw.decode("utf-8"),
        "machine_name": name,
        "hostname": socket.gethostname(),
        "os_name": host.os_name(),
        "agent_version": __version__,
        "time_zone": local_time_zone(),
        "replace": bool(replace),
        "replaces_machine_id": existing.machine_id if existing else "",
    }
    try:
        answer = anonymous.post("register/", payload)
    except PortalRefused as exc:
        _raise_for_refusal(exc)
        raise  # unreachable: _raise_for_refusal always raises
    finally:
        anonymous.close()

    registration = Registration(
        portal_url=creds.portal_url,
        portal_public_key=prepared.identity["public_key"],
        portal_fingerprint=str(prepared.identity.get("fingerprint", creds.fingerprint)),
        subscription_id=str(answer.get("subscription_id", "")),
        subscription_name=str(answer.get("subscription_name", "")),
        resource_group=str(answer.get("resource_group", "")),
        vault_id=str(answer["vault_id"]),
        vault_name=str(answer.get("vault_name", creds.vault_name)),
        machine_id=str(answer["machine_id"]),
        machine_name=str(answer.get("machine_name", name)),
        token=str(answer["token"]),
        broker_url=str(answer["broker_url"]),
        broker_transport_options=dict(answer.get("broker_transport_options") or {}),
        result_key_prefix=str(answer.get("result_key_prefix", "")),
        queue=str(answer["queue"]),
        container=str(answer.get("container", "")),
        grant=dict(answer.get("grant") or {}),
        registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    client = PortalClient(creds.portal_url, token=registration.token, proxies=proxies)
    try:
        broker = checks.check_broker(registration)
        if not broker.ok:
            note = _rollback(client, "broker unreachable")
            raise BrokerUnreachable(f"{broker.detail}. {broker.hint}{note}")
        try:
            registration.repository_id = _init_repository(
                registration, passphrase, proxies, store_opener, repository_init
            )
        except StorageUnreachable as exc:
            note = _rollback(client, "storage unreachable")
            raise StorageUnreachable(f"{exc}{note}") from None
        try:
            save_registration(registration, directory)
        except (OSError, ConfigError) as exc:
            note = _rollback(client, "config not writable")
            raise RegistrationError(f"cannot save the registration: {exc}.{note}") from None
    finally:
        client.close()
    return registration


def _init_repository(
    registration: Registration,
    passphrase: str,
    proxies: dict[str, str] | None,
    store_opener: checks.StoreOpener | None,
    repository_init: RepositoryInit | None,
) -> str:
    """Create the machine's repository: a random master key, wrapped by the passphrase."""
    opener = store_opener or open_store
    if repository_init is None:
        repository_init = Repository.init
    try:
        store = opener(registration.grant, proxies=proxies)
    except StorageError as exc:
        raise StorageUnreachable(f"cannot open the vault's storage: {exc}") from None
    try:
        repo = repository_init(store, passphrase)
    except StorageError as exc:
        raise StorageUnreachable(
            f"cannot write to the vault's storage: {exc}. The machine needs HTTPS access to "
            "the storage endpoint (Azure Blob or the portal's /storage/); check firewall and "
            "proxy settings, then register again"
        ) from None
    finally:
        store.close()
    return str(getattr(repo, "id", ""))


def credentials_error_line(exc: CredentialsError) -> str:
    return f"vault credentials refused ({exc.code}): {exc}"
