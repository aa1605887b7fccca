"""The portal's Ed25519 identity: it signs vault credentials and agent task messages.

Agents fetch the public key from the portal (``/api/agent/identity/``) and keep it, so a
credentials file edited by hand, or a task message not sent by this portal, is refused.
The private key is kept in ``HAVEN_SIGNING_KEY_FILE`` (default: the data directory),
generated on first use with permissions 0600.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings


def _key_path() -> Path:
    return Path(
        os.environ.get("HAVEN_SIGNING_KEY_FILE") or settings.DATA_DIR / "portal-signing-key.pem"
    )


@functools.cache
def private_key() -> Ed25519PrivateKey:
    path = _key_path()
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def public_key_b64() -> str:
    raw = (
        private_key()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return base64.b64encode(raw).decode()


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
