"""Two-factor sign-in: an authenticator app (TOTP, django-otp) plus ten recovery codes.

A user who enrolled signs in with the password and then a code; until the code is given,
the session is signed in but *pending*: ``pending_step`` says so, and the middleware
(``portal.middleware.TwoFactorMiddleware``), the API's session authentication and the
live socket (``portal.consumers``) let it reach nothing but the code page and sign-out.
A subscription whose Owner requires two-factor sign-in sends each member who has not
enrolled to enrolment instead. Failed codes count in the sign-in throttle
(``portal.throttle``) exactly as failed passwords do; django-otp refuses a code whose
time step was already used, so an overheard code cannot be replayed.

Personal access tokens are not sessions: they are created in a verified session and
authenticate API calls on their own (docs/security.md). But a token of a member who has not
enrolled reaches nothing of a subscription that requires two-factor sign-in (403 naming the
subscription; ``barred_subscriptions``), whenever the token was made; the member's other
subscriptions are unaffected. Machines' credentials and agent tokens are machine
identities, not a person's sign-in, and are not affected.
"""

from __future__ import annotations

import secrets
from base64 import b32encode
from enum import StrEnum

import segno
from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef, Value
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp import login as otp_login
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal import realtime
from portal.models import Membership, RecoveryCodes, Subscription, User, recovery_code_digest
from portal.signals import ACCESS_CHANGED, SESSION_ENDED

RECOVERY_CODE_COUNT = 10
APP_DEVICE_NAME = "Authenticator app"


class Step(StrEnum):
    """What a signed-in session still has to do before it may use the portal."""

    NONE = ""
    CODE = "code"  # enrolled: give a code from the app or a recovery code
    ENROL = "enrol"  # a subscription requires two-factor sign-in and the user has none


class CodeRefused(Exception):
    """The code is not the current one (or was used already)."""


def pending_step(user, session) -> Step:
    """One query: is the user enrolled, does a subscription require it, is this session
    verified by one of the user's confirmed devices?"""
    row = (
        User.objects.filter(pk=user.pk)
        .annotate(
            enrolled=enrolled_exists("pk"),
            enforced=Exists(
                Membership.objects.filter(
                    user=OuterRef("pk"), subscription__require_two_factor=True
                )
            ),
            verified=_verified(session.get(DEVICE_ID_SESSION_KEY) if session else None),
        )
        .values_list("enrolled", "enforced", "verified")
        .first()
    )
    if row is None:
        return Step.NONE
    enrolled, enforced, verified = row
    if enrolled:
        return Step.NONE if verified else Step.CODE
    return Step.ENROL if enforced else Step.NONE


def _verified(persistent_id):
    label, _, pk = str(persistent_id or "").rpartition("/")
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return Value(False)
    if model not in (TOTPDevice, RecoveryCodes) or not pk.isdigit():
        return Value(False)
    return Exists(model.objects.filter(pk=int(pk), user=OuterRef("pk"), confirmed=True))


def enrolled_exists(user_field: str):
    """An annotation: has the user in ``user_field`` a confirmed authenticator app?"""
    return Exists(TOTPDevice.objects.filter(user=OuterRef(user_field), confirmed=True))


def is_enrolled(user) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def requiring_subscriptions(user):
    """The user's subscriptions whose Owner requires two-factor sign-in."""
    return Subscription.objects.filter(memberships__user=user, require_two_factor=True)


def barred_subscriptions(user) -> dict[str, str]:
    """The user's subscriptions that require two-factor sign-in, while the user has no
    confirmed authenticator app: a personal access token of theirs reaches none
    of them (``portal.access.two_factor_barred``) until they enrol."""
    # One plain query in the common case (no subscription requires it); the enrolment is
    # looked up only when one does. Every token request pays this.
    required = Membership.objects.filter(
        user_id=user.pk, subscription__require_two_factor=True
    ).values_list("subscription_id", "subscription__name")
    barred = {str(pk): name for pk, name in required}
    if barred and is_enrolled(user):
        return {}
    return barred


def recovery_codes_left(user) -> int:
    device = RecoveryCodes.objects.filter(user=user, confirmed=True).first()
    return len(device.digests) if device else 0


# --- Enrolment ----------------------------------------------------------------------------
def enrolment_start(*, user) -> TOTPDevice:
    """A new, unconfirmed app device (any earlier unconfirmed one is dropped)."""
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    return TOTPDevice.objects.create(user=user, name=APP_DEVICE_NAME, confirmed=False)


def enrolment_pending(user) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-pk").first()


def secret_text(device: TOTPDevice) -> str:
    """The key as an authenticator app asks for it typed in: base32, in groups of four."""
    text = b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def qr_svg(device: TOTPDevice) -> str:
    """The otpauth:// URI as an inline SVG (no script, no data: URL; the CSP allows it)."""
    return segno.make(device.config_url, error="m").svg_inline(scale=4, border=2, dark="#1b1a19")


@transaction.atomic
def enrolment_confirm(*, request, device: TOTPDevice, code: str) -> list[str]:
    """Activate the app device with a current code; returns the new recovery codes
    (shown once). The session that confirmed counts as verified."""
    if not device.verify_token(_digits(code)):
        raise CodeRefused("That code is not the current one. Check the app's clock and retry.")
    TOTPDevice.objects.filter(user=device.user).exclude(pk=device.pk).delete()
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    otp_login(request, device)
    # The user's other sessions gave no code: their open sockets close (after commit) and
    # may not reopen; this session's page reconnects, verified.
    realtime.tell_user_sockets(device.user_id, {"type": SESSION_ENDED, "session_key": None})
    return recovery_codes_regenerate(user=device.user)


def recovery_codes_regenerate(*, user) -> list[str]:
    """Ten fresh codes; the old ones stop working. Only digests are stored."""
    codes = [_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    RecoveryCodes.objects.update_or_create(
        user=user,
        defaults={
            "name": "Recovery codes",
            "confirmed": True,
            "digests": [recovery_code_digest(code) for code in codes],
        },
    )
    return codes


def _recovery_code() -> str:
    raw = b32encode(secrets.token_bytes(10)).decode().lower()  # 16 characters, 80 bits
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:12]}-{raw[12:16]}"


def _digits(code: str) -> str:
    return "".join(ch for ch in str(code) if not ch.isspace())


# --- Sign-in ------------------------------------------------------------------------------
def verify(*, request, code: str):
    """Check a code from the app or a recovery code; on success mark the session verified
    and return the device that passed. Raises CodeRefused."""
    user = request.user
    code = _digits(code)[:64]
    if not code:
        raise CodeRefused("Enter the 6-digit code from your authenticator app.")
    if code.isascii() and code.isdigit():
        devices = TOTPDevice.objects.filter(user=user, confirmed=True)
    else:
        devices = RecoveryCodes.objects.filter(user=user, confirmed=True)
    for device in devices:
        if device.verify_token(code):
            otp_login(request, device)
            return device
    raise CodeRefused(
        "That code is wrong or was already used. Enter the current code from your "
        "authenticator app, or one of your recovery codes."
    )


# --- Turning it off -----------------------------------------------------------------------
def disable(*, user, code: str, password: str) -> None:
    """The user turns two-factor sign-in off: needs a current code or the password, and
    no subscription of theirs may require it."""
    required = list(requiring_subscriptions(user).values_list("name", flat=True))
    if required:
        raise ValidationError(
            {
                "__all__": [
                    f"{', '.join(required)} requires two-factor sign-in for its members: it "
                    "cannot be turned off while you belong to it."
                ]
            }
        )
    code = _digits(code)
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    proved = bool(password) and user.check_password(password)
    if not proved and code and device is not None:
        proved = device.verify_token(code)
    if not proved:
        raise ValidationError(
            {"code": ["Enter a current code from your app, or your password, to turn it off."]}
        )
    reset(user=user)


def reset(*, user) -> None:
    """Remove every second factor of the user (they enrol again if required)."""
    TOTPDevice.objects.filter(user=user).delete()
    RecoveryCodes.objects.filter(user=user).delete()


@transaction.atomic
def subscription_require_set(*, subscription: Subscription, required: bool, by) -> bool:
    """Returns whether the setting changed. The Owner who turns it on must have enrolled:
    else the next page would send them to enrolment with no warning."""
    if required and not is_enrolled(by):
        raise ValidationError(
            {
                "require": [
                    "Set up your own two-factor sign-in first (your account menu, "
                    "Two-factor sign-in); then require it of the members."
                ]
            }
        )
    changed = subscription.require_two_factor != required
    if changed:
        subscription.require_two_factor = required
        subscription.save(update_fields=["require_two_factor"])
    if changed and required:
        # Members who have not enrolled lose their open sockets now (after commit): each
        # socket's re-check finds the requirement (portal.live.still_allowed).
        for user_id in (
            Membership.objects.filter(subscription=subscription)
            .exclude(enrolled_exists("user"))
            .values_list("user_id", flat=True)
        ):
            realtime.tell_user_sockets(user_id, {"type": ACCESS_CHANGED})
    return changed
