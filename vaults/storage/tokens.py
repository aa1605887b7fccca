"""Grant tokens for the portal's own storage endpoint (the local-directory backend).

A token is Django-signed JSON (HMAC-SHA256 with a key derived from ``SECRET_KEY`` and the
purpose string ``SALT``, so no other signed value of the portal can pass for one):

    {"v": 1, "c": container, "a": "primary" | "secondary", "p": "rcl",
     "e": expiry (unix seconds), "g": the container's grant generation}

The generation is a random id kept with the container (``.haven/grant-generation``);
``revoke_grants`` replaces it, which invalidates every outstanding token at once, and a
container deleted and created again under the same name gets a new one too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from django.core import signing

from agents.runtime.blobstore.http import AUTH_SCHEME

SALT = "haven.vaults.storage.grant-token"
VERSION = 1


class GrantRefused(Exception):
    """Why a request's grant is not accepted; ``code`` goes in the JSON error body."""

    def __init__(self, code: str, message: str, *, status: int = 403):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class GrantClaims:
    container: str
    account: str
    permissions: str
    expires_at: datetime
    generation: str


def now() -> float:
    """The clock grants are checked against (tests move it)."""
    return time.time()


def sign_grant(
    *, container: str, account: str, permissions: str, expires_at: datetime, generation: str
) -> str:
    payload = {
        "v": VERSION,
        "c": container,
        "a": account,
        "p": permissions,
        "e": int(expires_at.timestamp()),
        "g": generation,
    }
    return signing.dumps(payload, salt=SALT, compress=False)


def read_grant(token: str) -> GrantClaims:
    """The claims of a token whose signature is good (expiry and generation are the
    caller's to check against the container). Raises ``GrantRefused``."""
    try:
        payload = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        raise GrantRefused(
            "forbidden", "the storage grant is not valid (damaged, or issued by another portal)"
        ) from None
    try:
        if payload["v"] != VERSION:
            raise KeyError("v")
        return GrantClaims(
            container=str(payload["c"]),
            account=str(payload["a"]),
            permissions=str(payload["p"]),
            expires_at=datetime.fromtimestamp(int(payload["e"]), UTC),
            generation=str(payload["g"]),
        )
    except (KeyError, TypeError, ValueError):
        raise GrantRefused(
            "forbidden", "the storage grant has an unknown format; ask the portal for a new one"
        ) from None


def check_not_expired(claims: GrantClaims) -> None:
    if now() >= claims.expires_at.timestamp():
        raise GrantRefused(
            "grant expired",
            f"the storage grant expired at {claims.expires_at:%Y-%m-%d %H:%M:%S} UTC; "
            "ask the portal for a new one",
        )


def claims_from_header(authorization: str, container: str) -> GrantClaims:
    """The claims of the grant in an ``Authorization: HavenGrant <token>`` header, checked
    for everything that needs no storage: signature, container, expiry. Raises
    ``GrantRefused`` (401 without a grant). Cheap enough to ask before reading a body."""
    scheme, _, token = authorization.partition(" ")
    if scheme != AUTH_SCHEME or not token.strip():
        raise GrantRefused(
            "unauthorized",
            f"send the storage grant as 'Authorization: {AUTH_SCHEME} <token>'",
            status=401,
        )
    claims = read_grant(token.strip())
    if claims.container != container:
        raise GrantRefused("forbidden", "this storage grant is for another container")
    check_not_expired(claims)
    return claims
