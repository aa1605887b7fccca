"""Reading and checking a vault credentials file on the machine, before anything is sent.

The file (issued by the portal, ``vaults/credentials.py``) is JSON
``{"format": "haven-vault-credentials/1", "credentials": {...}, "signature": "..."}``; the
credentials name the portal, the fingerprint of the portal's signing key, the vault, the
credential id, a registration secret and an expiry, and the signature is the portal's
Ed25519 signature over their canonical JSON (sorted keys, no spaces, UTF-8). The agent fetches the portal's public key from ``/api/agent/identity/`` and
checks, in this order, each with its own error:

1. the file is well-formed (``CredentialsMalformed``);
2. the portal at the file's URL presents the key the file names (``PortalIdentityMismatch``:
   another portal, or a portal whose key changed);
3. the signature verifies with that key (``CredentialsTampered``: edited by hand);
4. it has not expired (``CredentialsExpired``).

Revocation, single use and the downloader's role are known only to the portal, which answers
``revoked``, ``used`` or ``role_too_low`` at registration.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class CredentialsError(Exception):
    """A vault credentials file cannot be used; the message says why and what to do."""

    code = "credentials"


class CredentialsMalformed(CredentialsError):
    code = "malformed"


class CredentialsTampered(CredentialsError):
    code = "tampered"


class CredentialsExpired(CredentialsError):
    code = "expired"


class CredentialsRevoked(CredentialsError):
    code = "revoked"


class CredentialsForeign(CredentialsError):
    """The credentials belong to another portal (or a vault this portal does not know)."""

    code = "foreign"


class PortalIdentityMismatch(CredentialsForeign):
    code = "portal_identity"


class CredentialsUsed(CredentialsError):
    """Limited to one registration, and that registration happened (the portal knows)."""

    code = "used"


class CredentialsRoleTooLow(CredentialsError):
    """Downloaded by someone whose role does not allow this (replacing a machine needs a
    Contributor's or Owner's file); the portal knows."""

    code = "role_too_low"


FORMAT_PREFIX = "haven-vault-credentials/"
DOWNLOAD_AGAIN = (
    "Download new vault credentials in the portal (vault › Properties or Backup › "
    "Prepare infrastructure) and try again."
)


@dataclass(frozen=True)
class VaultCredentials:
    raw: bytes
    data: dict[str, Any]
    portal_url: str
    fingerprint: str
    vault_id: str
    vault_name: str
    credential_id: str
    expires_at: datetime
    signature: str

    @property
    def signed_bytes(self) -> bytes:
        """The signed fields, canonically (``data`` is the inner ``credentials`` object)."""
        return canonical({k: v for k, v in self.data.items() if k != "signature"})


def canonical(data: dict[str, Any]) -> bytes:
    """The bytes the portal signs: sorted keys, no spaces, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def fingerprint_of(public_key_b64: str) -> str:
    """The same short name the portal computes (``portal.signing.key_fingerprint``)."""
    return hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:16]


def _pick(data: dict[str, Any], *names: str) -> str:
    for name in names:
        value = data.get(name)
        if isinstance(value, str | int) and str(value):
            return str(value)
    # Some issuers nest the vault: {"vault": {"id": ..., "name": ...}}.
    vault = data.get("vault")
    if isinstance(vault, dict):
        for name in names:
            nested = vault.get(name.removeprefix("vault_"))
            if isinstance(nested, str) and nested:
                return nested
    raise CredentialsMalformed(
        f"the vault credentials file has no {names[0]!r}. It may be truncated or not a Haven "
        f"vault credentials file. {DOWNLOAD_AGAIN}"
    )


def parse(raw: bytes) -> VaultCredentials:
    """Parse a credentials file; raises ``CredentialsMalformed``."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CredentialsMalformed(
            f"the vault credentials file is not JSON (is it the right file?). {DOWNLOAD_AGAIN}"
        ) from None
    if not isinstance(data, dict):
        raise CredentialsMalformed(
            f"the vault credentials file is not a JSON object. {DOWNLOAD_AGAIN}"
        )
    signature = data.get("signature")
    if isinstance(data.get("credentials"), dict):
        # {"format": "haven-vault-credentials/1", "credentials": {...}, "signature": "..."}
        fmt = str(data.get("format", ""))
        if not fmt.startswith(FORMAT_PREFIX):
            raise CredentialsMalformed(
                f"this is not a Haven vault credentials file (format {fmt!r}). {DOWNLOAD_AGAIN}"
            )
        data = data["credentials"]
    if not isinstance(signature, str) or not signature:
        raise CredentialsMalformed(f"the vault credentials file has no signature. {DOWNLOAD_AGAIN}")
    expires_raw = _pick(data, "expires_at", "expires")
    try:
        expires_at = datetime.fromisoformat(expires_raw.replace("Z", "+00:00"))
    except ValueError:
        raise CredentialsMalformed(
            f"the expiry {expires_raw!r} in the vault credentials file is not a date. "
            + DOWNLOAD_AGAIN
        ) from None
    if expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)
    portal_url = _pick(data, "portal_url", "portal")
    if not portal_url.startswith(("http://", "https://")):
        raise CredentialsMalformed(f"the portal URL {portal_url!r} is not an http(s) URL")
    return VaultCredentials(
        raw=raw,
        data=data,
        portal_url=portal_url.rstrip("/"),
        fingerprint=_pick(
            data, "portal_key_fingerprint", "portal_fingerprint", "fingerprint", "key_fingerprint"
        ),
        vault_id=_pick(data, "vault_id"),
        vault_name=_pick(data, "vault_name"),
        credential_id=_pick(data, "credential_id", "id"),
        expires_at=expires_at,
        signature=signature,
    )


def verify(creds: VaultCredentials, *, public_key_b64: str, now: datetime | None = None) -> None:
    """Check portal identity, signature and expiry against the portal's public key."""
    presented = fingerprint_of(public_key_b64)
    if presented != creds.fingerprint:
        raise PortalIdentityMismatch(
            f"the portal at {creds.portal_url} presents signing key {presented}, but the vault "
            f"credentials were issued by key {creds.fingerprint}. Either the file comes from "
            "another Haven portal, or this portal's identity changed (reinstalled, or "
            "someone in between). Check the URL; if the portal was reinstalled, " + DOWNLOAD_AGAIN
        )
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64))
        key.verify(base64.b64decode(creds.signature), creds.signed_bytes)
    except (InvalidSignature, ValueError):
        raise CredentialsTampered(
            "the vault credentials file's signature does not match its content: the file "
            "was edited or damaged after download. " + DOWNLOAD_AGAIN
        ) from None
    moment = now or datetime.now(UTC)
    if creds.expires_at <= moment:
        raise CredentialsExpired(
            f"the vault credentials expired at {creds.expires_at:%Y-%m-%d %H:%M} UTC "
            "(they are valid for a limited time). " + DOWNLOAD_AGAIN
        )


ERRORS_BY_CODE: dict[str, type[CredentialsError]] = {
    cls.code: cls
    for cls in (
        CredentialsMalformed,
        CredentialsTampered,
        CredentialsExpired,
        CredentialsRevoked,
        CredentialsForeign,
        PortalIdentityMismatch,
        CredentialsUsed,
        CredentialsRoleTooLow,
    )
}
