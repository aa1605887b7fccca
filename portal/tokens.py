"""Personal access tokens for the REST API (docs/api.md).

A person creates a token on their account page: it is named, expires after the days they
chose (at most ``MAX_DAYS``), is shown once, and is stored only as a SHA-256 digest. A token
acts with its owner's roles, as the owner would in the browser; it stops working when it is
revoked or expires, when its owner is deactivated, and while its owner must first replace a
one-time password.

Wrong tokens count against the sign-in throttle (``portal.throttle``) of the client address,
under the account name ``THROTTLE_ACCOUNT``: a guesser is paused like one guessing passwords.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from portal.models import PersonalAccessToken

TOKEN_PREFIX = "hvn_"
MAX_DAYS = 366
DEFAULT_DAYS = 30
DAY_CHOICES = (7, 30, 90, 180, 366)
MAX_ACTIVE = 50
NAME_MAX = 80
THROTTLE_ACCOUNT = "api token"
# Writing last_used_at on every request would make each API call a write; once a minute
# is enough to tell a person which of their tokens is in use.
LAST_USED_EVERY = timedelta(minutes=1)


class TokenRefused(Exception):
    """The token does not authenticate; the message says why, for the caller."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_create(*, user, name: str, days, now=None) -> tuple[PersonalAccessToken, str]:
    """Create a token for ``user``; returns the row and the token itself (shown once, never
    stored). Raises ValidationError keyed by field."""
    now = now or timezone.now()
    name = (name or "").strip()
    errors: dict[str, list[str]] = {}
    if not name:
        errors["name"] = ["Name the token after where it is used, like backup-scripts."]
    elif len(name) > NAME_MAX:
        errors["name"] = [f"The name can be at most {NAME_MAX} characters long."]
    try:
        days = int(days)
    except (TypeError, ValueError):
        days = 0
    if not 1 <= days <= MAX_DAYS:
        errors["days"] = [f"A token expires after 1 to {MAX_DAYS} days."]
    with transaction.atomic():
        active = PersonalAccessToken.objects.filter(
            user=user, revoked_at__isnull=True, expires_at__gt=now
        )
        if name and active.filter(name__iexact=name).exists():
            errors.setdefault("name", []).append(
                f"You already have an active token named {name!r}; choose another name."
            )
        if active.count() >= MAX_ACTIVE:
            errors.setdefault("name", []).append(
                f"You have {MAX_ACTIVE} active tokens, the most allowed; revoke one first."
            )
        if errors:
            raise ValidationError(errors)
        secret = secrets.token_urlsafe(32)
        token = f"{TOKEN_PREFIX}{secret}"
        row = PersonalAccessToken.objects.create(
            user=user,
            name=name,
            prefix=token[: len(TOKEN_PREFIX) + 6],
            digest=_digest(token),
            expires_at=now + timedelta(days=days),
        )
    return row, token


def token_revoke(*, user, token_id, now=None) -> PersonalAccessToken:
    """Revoke one of ``user``'s own tokens (another user's token is no such token)."""
    now = now or timezone.now()
    try:
        row = PersonalAccessToken.objects.get(pk=int(token_id), user=user)
    except (PersonalAccessToken.DoesNotExist, TypeError, ValueError):
        raise PersonalAccessToken.DoesNotExist("No such token") from None
    if row.revoked_at is None:
        PersonalAccessToken.objects.filter(pk=row.pk, revoked_at__isnull=True).update(
            revoked_at=now
        )
        row.refresh_from_db()
    return row


def token_authenticate(token: str, *, now=None):
    """The user ``token`` acts for, or TokenRefused saying why not."""
    now = now or timezone.now()
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise TokenRefused("This is not a Haven access token.")
    row = PersonalAccessToken.objects.select_related("user").filter(digest=_digest(token)).first()
    if row is None:
        raise TokenRefused("Unknown access token.")
    if row.revoked_at is not None:
        raise TokenRefused(f"The access token {row.name!r} was revoked.")
    if row.expires_at <= now:
        raise TokenRefused(
            f"The access token {row.name!r} expired on {row.expires_at:%Y-%m-%d}; create a "
            "new one on your account page."
        )
    user = row.user
    if not user.is_active:
        raise TokenRefused("The account of this access token is deactivated.")
    if user.password_change_required:
        raise TokenRefused(
            "Change your one-time password in the portal first; then the token works again."
        )
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
        PersonalAccessToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return user, row


def tokens_of(user):
    return PersonalAccessToken.objects.filter(user=user).order_by("-created_at", "-id")
