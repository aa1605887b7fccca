"""Vault credentials: the signed file a machine presents once, to register with a vault.

The file (``<vault>_<yyyy-mm-dd>.VaultCredentials``) is JSON::

    {"format": "haven-vault-credentials/1",
     "credentials": {...the signed fields...},
     "signature": "<base64 Ed25519 signature over canonical(credentials)>"}

``canonical`` is ``json.dumps(credentials, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8, so any edit to any field breaks the signature.
docs/vaults.md describes every field. The portal keeps only the SHA-256 of the
registration secret (``VaultCredential.secret_hash``).

``credentials_verify`` is what registration calls; each way a file can be refused has its
own exception, whose message tells the person what to do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal import signing
from portal.access import has_role, role_in
from portal.models import Role
from vaults import activity
from vaults.activity import Operation
from vaults.models import Vault, VaultCredential

FORMAT = "haven-vault-credentials/1"
VALID_FOR = timedelta(days=10)
FILE_SUFFIX = ".VaultCredentials"
MAX_FILE_BYTES = 64 * 1024
_REQUIRED = {
    "portal_url": str,
    "portal_key_fingerprint": str,
    "portal_public_key": str,
    "credential_id": str,
    "registration_secret": str,
    "vault_id": str,
    "vault_name": str,
    "subscription_id": str,
    "subscription_name": str,
    "resource_group": str,
    "location": str,
    "issued_at": str,
    "expires_at": str,
}


class CredentialsError(Exception):
    """Base of every reason a credentials file is refused; the message is for a person."""


class CredentialsMalformed(CredentialsError):
    """Not a vault credentials file, or one missing fields (truncated, wrong file)."""


class CredentialsTampered(CredentialsError):
    """The signature does not match: the file was edited after the portal issued it."""


class CredentialsExpired(CredentialsError):
    pass


class CredentialsRevoked(CredentialsError):
    pass


class CredentialsForeign(CredentialsError):
    """Issued by another Haven portal (another signing key)."""


class CredentialsUsed(CredentialsError):
    """A file limited to one registration that has registered a machine already."""


class CredentialsRoleTooLow(CredentialsError):
    """The person who downloaded the file lacks (or no longer has) the role this needs."""


def canonical(credentials: dict) -> bytes:
    return json.dumps(
        credentials, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def credentials_filename(vault: Vault, issued_at: datetime) -> str:
    return f"{vault.name}_{issued_at.astimezone(UTC):%Y-%m-%d}{FILE_SUFFIX}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def credentials_issue(
    *, vault: Vault, issued_by, single_use: bool = False
) -> tuple[str, bytes, VaultCredential]:
    """Issue a new credentials file for ``vault``: (filename, file content, record).

    The caller has checked the Backup Operator role. The record keeps who downloaded the
    file and their role then (replacing a machine needs a Contributor's or Owner's file);
    ``single_use`` limits it to one registration. The secret exists only in the returned
    content; the record holds its hash.
    """
    if vault.state != Vault.State.READY:
        raise ValueError(f"Vault {vault.name} is not deployed yet; credentials come after.")
    now = timezone.now().replace(microsecond=0)
    secret = secrets.token_urlsafe(32)
    role = role_in(issued_by, vault.subscription_id) or ""
    with transaction.atomic():
        record = VaultCredential.objects.create(
            id=uuid.uuid4(),
            vault=vault,
            secret_hash=secret_hash(secret),
            issued_by=issued_by,
            issued_role=role,
            single_use=bool(single_use),
            issued_at=now,
            expires_at=now + VALID_FOR,
        )
        activity.record(
            operation=Operation.CREDENTIALS_DOWNLOAD,
            user=issued_by,
            vault=vault,
            resource=credential_resource(record),
            detail={
                "role": role,
                "single_use": record.single_use,
                "expires_at": _iso(record.expires_at),
            },
        )
    credentials = {
        "portal_url": settings.HAVEN_PUBLIC_URL,
        "portal_key_fingerprint": signing.key_fingerprint(),
        "portal_public_key": signing.public_key_b64(),
        "credential_id": str(record.id),
        "registration_secret": secret,
        "vault_id": str(vault.pk),
        "vault_name": vault.name,
        "subscription_id": str(vault.subscription_id),
        "subscription_name": vault.subscription.name,
        "resource_group": vault.resource_group.name,
        "location": vault.location,
        "issued_at": _iso(record.issued_at),
        "expires_at": _iso(record.expires_at),
        "issued_by": issued_by.get_username(),
        "issued_role": role,
        "single_use": record.single_use,
    }
    document = {
        "format": FORMAT,
        "credentials": credentials,
        "signature": signing.sign(canonical(credentials)),
    }
    content = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return credentials_filename(vault, record.issued_at), content, record


def credentials_parse(content: bytes) -> tuple[dict, str]:
    """The signed fields and the signature, after checking the shape (not the signature)."""
    if len(content) > MAX_FILE_BYTES:
        raise CredentialsMalformed(
            "This file is too large to be vault credentials. Download the credentials again "
            "from the vault's Prepare infrastructure page."
        )
    try:
        document = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CredentialsMalformed(
            "This is not a vault credentials file (it is not readable JSON). Download the "
            "credentials again from the vault's Prepare infrastructure page."
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CredentialsMalformed(
            f"This is not a vault credentials file of this version (expected format {FORMAT}). "
            "Download the credentials again from the vault's Prepare infrastructure page."
        )
    credentials = document.get("credentials")
    signature = document.get("signature")
    if not isinstance(credentials, dict) or not isinstance(signature, str):
        raise CredentialsMalformed(
            "The credentials file is incomplete (no credentials or no signature). Download "
            "it again from the vault's Prepare infrastructure page."
        )
    missing = [k for k, kind in _REQUIRED.items() if not isinstance(credentials.get(k), kind)]
    if missing:
        raise CredentialsMalformed(
            f"The credentials file lacks {', '.join(sorted(missing))}. Download it again "
            "from the vault's Prepare infrastructure page."
        )
    return credentials, signature


def _parse_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CredentialsMalformed(
            f"The credentials file holds a date that cannot be read ({value!r})."
        ) from None


def credentials_verify(content: bytes, *, now: datetime | None = None) -> VaultCredential:
    """Check a credentials file presented at registration and return its record.

    Raises, in this order of checks: ``CredentialsMalformed``, ``CredentialsForeign``,
    ``CredentialsTampered``, ``CredentialsRevoked``, ``CredentialsExpired``.
    """
    now = now or timezone.now()
    credentials, signature = credentials_parse(content)
    ours = signing.key_fingerprint()
    if credentials["portal_key_fingerprint"] != ours:
        raise CredentialsForeign(
            "These credentials were issued by another Haven portal "
            f"({credentials['portal_url']}, key {credentials['portal_key_fingerprint']}), not "
            f"this one (key {ours}). Download vault credentials from this portal's vault."
        )
    try:
        base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise CredentialsTampered(
            "The credentials file's signature is damaged. Download the credentials again; "
            "do not edit the file."
        ) from None
    if not signing.verify(canonical(credentials), signature):
        raise CredentialsTampered(
            "The credentials file was changed after the portal issued it (its signature no "
            "longer matches). Download the credentials again; do not edit the file."
        )
    record = (
        VaultCredential.objects.select_related("vault", "vault__subscription", "issued_by")
        .filter(pk=_uuid_or_none(credentials["credential_id"]))
        .first()
    )
    if record is None or str(record.vault_id) != credentials["vault_id"]:
        raise CredentialsRevoked(
            f"These credentials for vault {credentials['vault_name']} no longer exist (the vault "
            "or its credentials were deleted). Download new credentials from the vault."
        )
    if not hmac.compare_digest(record.secret_hash, secret_hash(credentials["registration_secret"])):
        raise CredentialsTampered(
            "The registration secret in the credentials file does not match what the portal "
            "issued. Download the credentials again; do not edit the file."
        )
    if record.revoked_at is not None:
        raise CredentialsRevoked(
            f"These credentials for vault {record.vault.name} were revoked on "
            f"{record.revoked_at:%Y-%m-%d %H:%M} UTC. Download new credentials from the vault."
        )
    expires_at = _parse_time(credentials["expires_at"])
    if min(expires_at, record.expires_at) <= now:
        raise CredentialsExpired(
            f"These credentials for vault {record.vault.name} expired on "
            f"{record.expires_at:%Y-%m-%d %H:%M} UTC (they are valid for {VALID_FOR.days} days). "
            "Download new credentials from the vault's Prepare infrastructure page."
        )
    return record


def credentials_role_check(credential: VaultCredential, role: str, *, doing: str) -> None:
    """Raise ``CredentialsRoleTooLow`` unless the file's downloader had ``role`` (or higher)
    when downloading it and still has it now."""
    recorded = credential.issued_role
    user = credential.issued_by
    who = user.get_username() if user is not None else "a deleted user"
    wanted = f"{doing} needs vault credentials downloaded by a {Role(role).label} or Owner"
    if not recorded or Role.rank(recorded) < Role.rank(role):
        as_role = Role(recorded).label if recorded else "an unrecorded role"
        raise CredentialsRoleTooLow(
            f"{wanted}; these were downloaded by {who} as {as_role}. Ask a "
            f"{Role(role).label} or Owner of the subscription to download vault credentials."
        )
    if user is None or not has_role(user, credential.vault.subscription_id, role):
        raise CredentialsRoleTooLow(
            f"{wanted}; these were downloaded by {who}, who no longer has that role. Ask a "
            f"{Role(role).label} or Owner of the subscription to download vault credentials."
        )


def _uuid_or_none(value: str):
    try:
        return uuid.UUID(value)
    except ValueError:
        raise CredentialsMalformed(
            "The credentials file holds a credential id that cannot be read."
        ) from None


def credential_resource(credential: VaultCredential) -> activity.Resource:
    """A credentials file as the activity log names it (as the Credentials page does)."""
    return activity.Resource(
        kind="vault credentials", id=str(credential.pk), name=str(credential.pk)[:8]
    )


def credentials_revoke(*, credential: VaultCredential, user) -> VaultCredential:
    """Revoke one credentials file; machines already registered keep their own tokens."""
    if credential.revoked_at is None:
        with transaction.atomic():
            revoked = VaultCredential.objects.filter(
                pk=credential.pk, revoked_at__isnull=True
            ).update(revoked_at=timezone.now(), revoked_by=user)
            if revoked:
                activity.record(
                    operation=Operation.CREDENTIALS_REVOKE,
                    user=user,
                    vault=credential.vault,
                    resource=credential_resource(credential),
                )
        credential.refresh_from_db()
    return credential
