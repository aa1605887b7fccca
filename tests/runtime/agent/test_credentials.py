"""Checking vault credentials on the machine before anything is sent."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.runtime import credentials as vc

KEY = Ed25519PrivateKey.generate()
RAW = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
PUBLIC = base64.b64encode(RAW).decode()


def make_file(*, key=KEY, expires=None, **changes) -> bytes:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    fields = {
        "portal_url": "https://haven.example.test",
        "portal_key_fingerprint": hashlib.sha256(raw).hexdigest()[:16],
        "portal_public_key": base64.b64encode(raw).decode(),
        "credential_id": "5f1c9a52-1111-4222-8333-444455556666",
        "registration_secret": "s3cret",
        "vault_id": "0b7f0c3c-aaaa-4bbb-8ccc-dddddddddddd",
        "vault_name": "vault-one",
        "expires_at": (expires or datetime.now(UTC) + timedelta(days=10)).isoformat(),
    }
    signature = base64.b64encode(key.sign(vc.canonical(fields))).decode()
    fields.update(changes)
    document = {
        "format": "haven-vault-credentials/1",
        "credentials": fields,
        "signature": signature,
    }
    return json.dumps(document).encode()


def test_a_good_file_verifies():
    creds = vc.parse(make_file())
    vc.verify(creds, public_key_b64=PUBLIC)
    assert creds.vault_name == "vault-one" and creds.portal_url == "https://haven.example.test"
    assert creds.fingerprint == vc.fingerprint_of(PUBLIC)


@pytest.mark.parametrize(
    ("content", "error", "code"),
    [
        (b"\x00\x01binary", vc.CredentialsMalformed, "malformed"),
        (
            b'{"format": "something-else/1", "credentials": {}, "signature": "x"}',
            vc.CredentialsMalformed,
            "malformed",
        ),
        (make_file(vault_name="edited"), vc.CredentialsTampered, "tampered"),
        (make_file(expires=datetime(2020, 1, 1, tzinfo=UTC)), vc.CredentialsExpired, "expired"),
        (make_file(key=Ed25519PrivateKey.generate()), vc.PortalIdentityMismatch, "portal_identity"),
    ],
    ids=["not-json", "wrong-format", "edited", "expired", "other-portal"],
)
def test_each_problem_has_its_own_error(content, error, code):
    with pytest.raises(error) as caught:
        vc.verify(vc.parse(content), public_key_b64=PUBLIC)
    assert caught.value.code == code
    assert "Download" in str(caught.value) or code == "portal_identity"
