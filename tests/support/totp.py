"""Real TOTP codes for tests: what an authenticator app would show for a device's key."""

from __future__ import annotations

import time
from base64 import b32decode

from django_otp.oath import TOTP


def code_for_key(key: bytes, *, steps_ahead: int = 0, digits: int = 6) -> str:
    """The code an app with ``key`` shows now (or ``steps_ahead`` 30-second steps later:
    a code whose step was used is refused, and the device accepts one step of drift)."""
    totp = TOTP(key, step=30, t0=0, digits=digits)
    totp.time = time.time() + 30 * steps_ahead
    return f"{totp.token():0{digits}d}"


def code_for(device, *, steps_ahead: int = 0) -> str:
    return code_for_key(device.bin_key, steps_ahead=steps_ahead, digits=device.digits)


def key_from_secret_text(text: str) -> bytes:
    """The key from the base32 text the enrolment page shows (spaces between groups)."""
    raw = "".join(text.split()).upper()
    return b32decode(raw + "=" * (-len(raw) % 8))
