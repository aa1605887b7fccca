"""The portal's Ed25519 identity: it signs vault credentials and agent task messages.

Agents fetch the public key from the portal (``/api/agent/identity/``) and keep it, so a
credentials file edited by hand, or a task message not sent by this portal, is refused.
Every portal process of one installation must hold the same key, so it lives in no
portal's local disk (docs/configuration.md, "Running more than one portal"):

* ``HAVEN_SIGNING_KEY`` (or ``HAVEN_SIGNING_KEY_FILE``), secret configuration: an Ed25519
  private key in PEM (``openssl genpkey -algorithm ed25519``) or its 32 raw bytes in base64;
* otherwise the database: a ``PortalKey`` row generated once, under a unique constraint so
  two portals starting together agree, sealed with a key derived from ``SECRET_KEY``.
  A key file an older portal kept in the data directory (``portal-signing-key.pem``) is
  imported into that row the first time, so agents that pinned its public key keep working.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

log = logging.getLogger(__name__)

KEY_NAME = "signing"
LEGACY_FILE = "portal-signing-key.pem"  # where portals before issue 13 generated the key
_SEAL_INFO = b"haven portal key seal v1"


class SigningKeyUnusable(ImproperlyConfigured):
    """The configured or stored signing key cannot be read; the message says what to do."""


# --- the key at rest ----------------------------------------------------------------------
def _seal_key(secret: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(
        secret.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(pem: bytes) -> str:
    return _seal_key(settings.SECRET_KEY).encrypt(pem).decode()


def unseal(sealed: str) -> tuple[bytes, bool]:
    """The PEM, and whether it was sealed with an older key (``SECRET_KEY_FALLBACKS``)."""
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    for index, secret in enumerate(secrets):
        try:
            return _seal_key(secret).decrypt(sealed.encode()), index > 0
        except InvalidToken:
            continue
    raise SigningKeyUnusable(
        "The portal's signing key in the database was sealed with another SECRET_KEY. Give "
        "every portal the SECRET_KEY it had when the key was made (list the old one in "
        "SECRET_KEY_FALLBACKS while changing it), or set HAVEN_SIGNING_KEY."
    )


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(value: str | bytes, *, source: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM or from base64 of its 32 raw bytes."""
    text = value.decode() if isinstance(value, bytes) else value
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError) as exc:
        raise SigningKeyUnusable(
            f"{source} is not an Ed25519 private key (PEM, or 32 bytes in base64): {exc}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyUnusable(f"{source} holds a key of another kind; Haven signs with Ed25519")
    return key


def _legacy_key() -> tuple[Ed25519PrivateKey, str] | None:
    path = Path(settings.DATA_DIR) / LEGACY_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    return load_key(text, source=str(path)), f"imported from {path}"


def _stored_key() -> Ed25519PrivateKey:
    from portal.models import PortalKey

    row = PortalKey.objects.filter(name=KEY_NAME).first()
    if row is None:
        key, origin = _legacy_key() or (Ed25519PrivateKey.generate(), "generated")
        row, created = PortalKey.objects.get_or_create(
            name=KEY_NAME, defaults={"sealed": seal(_pem(key)), "origin": origin}
        )
        if created:
            log.info("portal signing key %s and stored in the database", origin)
    pem, old_seal = unseal(row.sealed)
    if old_seal:
        PortalKey.objects.filter(pk=row.pk, sealed=row.sealed).update(sealed=seal(pem))
    key = load_key(pem, source="the signing key in the database")
    legacy = _legacy_key()
    if legacy and _public_raw(legacy[0]) != _public_raw(key):
        log.warning(
            "%s holds another key than the database's; agents that pinned it will refuse "
            "this portal's tasks (the database's key is used)",
            Path(settings.DATA_DIR) / LEGACY_FILE,
        )
    return key


_held: list[Ed25519PrivateKey] = []  # this process's key, once it is known to be stored


def private_key() -> Ed25519PrivateKey:
    if _held:
        return _held[0]
    configured = getattr(settings, "HAVEN_SIGNING_KEY", None)
    if configured:
        key = load_key(configured, source="HAVEN_SIGNING_KEY")
        _held[:] = [key]
        return key
    key = _stored_key()
    # Kept only once its row is committed: a key made in a transaction that rolls back was
    # never stored, and another portal would make another one.
    transaction.on_commit(lambda: _held.__setitem__(slice(None), [key]))
    return key


def forget() -> None:
    """Drop the key this process holds (a test's "fresh process")."""
    _held.clear()


# --- using it -------------------------------------------------------------------------------
def _public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64() -> str:
    return base64.b64encode(_public_raw(private_key())).decode()


def key_fingerprint() -> str:
    """A short, stable name of the portal's key (shown in the UI and in credentials)."""
    return hashlib.sha256(base64.b64decode(public_key_b64())).hexdigest()[:16]


def sign(data: bytes) -> str:
    return base64.b64encode(private_key().sign(data)).decode()


def verify(data: bytes, signature_b64: str, *, public_key_b64_value: str | None = None) -> bool:
    key_b64 = public_key_b64_value or public_key_b64()
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key_b64))
        public.verify(base64.b64decode(signature_b64), data)
    except (InvalidSignature, ValueError):
        return False
    return True
