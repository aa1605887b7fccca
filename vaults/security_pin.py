"""Security PINs: the second say-so a critical operation needs (docs/protection.md).

A person generates a PIN in the portal (the vault's Properties › Security PIN); it is shown
once, valid ``VALID_FOR``, usable once, and only by the person it was generated for, on that
vault. Only a keyed hash is stored (HMAC with a key derived from ``SECRET_KEY`` over a
random salt and the PIN), compared in constant time. Generating a new PIN voids the
person's earlier unused one; ``MAX_WRONG`` wrong PINs in a row void the live one too, so a
PIN cannot be guessed (one in 10**8 per try, five tries per PIN, each new PIN needing the
person's own session).

``consume`` is the one door for a person in the portal: the caller names the operation,
and every refusal is a ``PinRefused`` subclass whose message a person can act on.

``consume_for_vault`` is the door for a PIN typed on a machine (``haven-agent
change-passphrase --security-pin PIN``), where no portal user is signed in: the PIN is
looked up among the vault's live PINs by its keyed hash, and the person who generated it
is the one the operation is recorded for (they must still hold Contributor or more on the
vault). A wrong PIN counts as a wrong try against every live PIN of the vault, so a machine
cannot guess its way in either (``MAX_WRONG`` tries void them).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.db import models, transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from vaults.models import SecurityPin, Vault

PIN_DIGITS = 8
VALID_FOR = timedelta(minutes=5)
MAX_WRONG = 5
# A typed PIN is recognised as one of the person's expired or used ones this far back.
RECOGNISED_FOR = timedelta(days=1)
_KEY_SALT = "haven.vaults.security_pin"


class Operation(models.TextChoices):
    """The critical operations that ask for a PIN (what ``SecurityPin.used_for`` records)."""

    STOP_AND_DELETE = "stop_delete", "Stop protection and delete backup data"
    SOFT_DELETE_WEAKEN = "soft_delete_weaken", "Turn soft delete off or shorten it"
    SECURITY_FEATURES_OFF = "security_off", "Turn security features off"
    RETENTION_LOWER = "retention_lower", "Lower the retention of a backup policy"
    IMMUTABILITY_LOCK = "immutability_lock", "Lock the immutable vault"
    IMMUTABILITY_DISABLE = "immutability_disable", "Disable the immutable vault"
    PASSPHRASE_CHANGE = "passphrase_change", "Change a machine's encryption passphrase"


class PinRefused(Exception):
    """The PIN does not allow the operation; the message says why and what to do."""


class PinMissing(PinRefused):
    pass


class PinWrong(PinRefused):
    pass


class PinExpired(PinRefused):
    pass


class PinAlreadyUsed(PinRefused):
    pass


class PinOfAnotherUser(PinRefused):
    pass


class PinTooManyWrong(PinRefused):
    pass


def _digest(salt: str, pin: str) -> str:
    return salted_hmac(_KEY_SALT, f"{salt}:{pin}", algorithm="sha256").hexdigest()


def _matches(row: SecurityPin, pin: str) -> bool:
    return constant_time_compare(row.digest, _digest(row.salt, pin))


def _live(qs, now: datetime):
    return qs.filter(used_at__isnull=True, voided_at__isnull=True, expires_at__gt=now)


def generate(*, user, vault: Vault, now: datetime | None = None) -> str:
    """A new PIN for ``user`` on ``vault``; the caller shows it once. The user's earlier
    unused PIN for the vault stops working. The caller checked the role."""
    now = now or timezone.now()
    pin = "".join(secrets.choice("0123456789") for _ in range(PIN_DIGITS))
    salt = secrets.token_hex(16)
    with transaction.atomic():
        _live(SecurityPin.objects.filter(vault=vault, user=user), now).update(voided_at=now)
        SecurityPin.objects.create(
            vault=vault,
            user=user,
            salt=salt,
            digest=_digest(salt, pin),
            created_at=now,
            expires_at=now + VALID_FOR,
        )
    return pin


def consume(
    *, user, vault: Vault, pin: str, operation: Operation, now: datetime | None = None
) -> SecurityPin:
    """Use ``user``'s live PIN for ``operation`` on ``vault``, or raise ``PinRefused``.

    Call it outside any transaction, after the operation's own checks and just before it
    runs: the PIN is used up (or the wrong try counted) in a transaction of its own, so a
    refusal that rolls the operation back cannot undo the count of wrong tries."""
    now = now or timezone.now()
    with transaction.atomic():
        used, refusal = _consume(user, vault, (pin or "").strip(), operation, now)
        _record_use(vault=vault, user=user, operation=operation, refusal=refusal)
    if refusal is not None:
        raise refusal
    assert used is not None
    return used


def _record_use(*, vault: Vault, user, operation: Operation, refusal) -> None:
    """The activity log's entry for one use of a PIN, allowed or refused."""
    from vaults import activity

    activity.record(
        operation=activity.Operation.PIN_REFUSE if refusal else activity.Operation.PIN_USE,
        user=user,
        vault=vault,
        outcome=activity.Outcome.REFUSED if refusal else activity.Outcome.SUCCEEDED,
        reason=str(refusal) if refusal else "",
        detail={"for": operation.label, "refusal": type(refusal).__name__ if refusal else ""},
    )


def _consume(user, vault, pin, operation, now):
    minutes = minutes_valid()
    if not pin:
        return None, PinMissing(
            f"{operation.label} needs a security PIN. Generate one under the vault's "
            f"Properties › Security PIN; it is valid for {minutes} minutes."
        )
    mine = list(
        SecurityPin.objects.select_for_update()
        .filter(vault=vault, user=user, created_at__gte=now - RECOGNISED_FOR)
        .order_by("-created_at")
    )
    live = next(
        (p for p in mine if p.used_at is None and p.voided_at is None and p.expires_at > now),
        None,
    )
    if live is not None and _matches(live, pin):
        SecurityPin.objects.filter(pk=live.pk).update(used_at=now, used_for=operation.value)
        live.used_at, live.used_for = now, operation.value
        return live, None
    for row in mine:
        if row is live or not _matches(row, pin):
            continue
        if row.used_at is not None:
            return None, PinAlreadyUsed(
                "This security PIN was already used; each PIN works once. Generate a new one."
            )
        if row.failed_attempts >= MAX_WRONG:
            return None, PinTooManyWrong(_too_many_message())
        if row.voided_at is not None:
            return None, PinExpired(
                "This security PIN was replaced by a newer one you generated; use the newest."
            )
        return None, PinExpired(
            f"This security PIN expired (PINs are valid for {minutes} minutes). Generate a new one."
        )
    others = _live(SecurityPin.objects.filter(vault=vault).exclude(user=user), now)
    if any(_matches(row, pin) for row in others):
        return None, PinOfAnotherUser(
            "This security PIN was generated by another user. A PIN works only for the "
            "person who generated it: generate your own."
        )
    if live is not None:
        attempts = live.failed_attempts + 1
        fields: dict = {"failed_attempts": attempts}
        if attempts >= MAX_WRONG:
            fields["voided_at"] = now
        SecurityPin.objects.filter(pk=live.pk).update(**fields)
        if attempts >= MAX_WRONG:
            return None, PinTooManyWrong(_too_many_message())
    return None, PinWrong(
        "The security PIN is wrong. Check it, or generate a new one under the vault's "
        "Properties › Security PIN."
    )


def consume_for_vault(
    *, vault: Vault, pin: str, operation: Operation, now: datetime | None = None
) -> SecurityPin:
    """Use the vault's live PIN that ``pin`` is, whoever generated it, or raise
    ``PinRefused``; the returned row's ``user`` is the person the operation is theirs. Same
    transaction rule as ``consume``."""
    now = now or timezone.now()
    with transaction.atomic():
        used, refusal = _consume_for_vault(vault, (pin or "").strip(), operation, now)
        _record_use(
            vault=vault,
            user=used.user if used is not None else None,
            operation=operation,
            refusal=refusal,
        )
    if refusal is not None:
        raise refusal
    assert used is not None
    return used


def _consume_for_vault(vault, pin, operation, now):
    from portal import access
    from portal.models import Role

    minutes = minutes_valid()
    if not pin:
        return None, PinMissing(
            f"{operation.label} needs a security PIN. A Contributor of the vault generates "
            f"one under its Properties › Security PIN; it is valid for {minutes} minutes."
        )
    recent = list(
        SecurityPin.objects.select_for_update()
        .select_related("user")
        .filter(vault=vault, created_at__gte=now - RECOGNISED_FOR)
        .order_by("-created_at")
    )
    live = [p for p in recent if p.used_at is None and p.voided_at is None and p.expires_at > now]
    match = next((p for p in live if _matches(p, pin)), None)
    if match is not None:
        if not access.has_role(match.user, vault.subscription_id, Role.CONTRIBUTOR):
            return None, PinOfAnotherUser(
                "The person who generated this security PIN is no longer a Contributor of "
                "the vault; a Contributor must generate a new one."
            )
        SecurityPin.objects.filter(pk=match.pk).update(used_at=now, used_for=operation.value)
        match.used_at, match.used_for = now, operation.value
        return match, None
    for row in recent:
        if not _matches(row, pin):
            continue
        if row.used_at is not None:
            return None, PinAlreadyUsed(
                "This security PIN was already used; each PIN works once. Generate a new one."
            )
        if row.failed_attempts >= MAX_WRONG:
            return None, PinTooManyWrong(_too_many_message())
        return None, PinExpired(
            f"This security PIN expired or was replaced (PINs are valid for {minutes} "
            "minutes). Generate a new one."
        )
    for row in live:
        attempts = row.failed_attempts + 1
        fields: dict = {"failed_attempts": attempts}
        if attempts >= MAX_WRONG:
            fields["voided_at"] = now
        SecurityPin.objects.filter(pk=row.pk).update(**fields)
    return None, PinWrong(
        "The security PIN is wrong. Check it, or generate a new one under the vault's "
        "Properties › Security PIN."
    )


def _too_many_message() -> str:
    return (
        f"Too many wrong security PINs ({MAX_WRONG}); the PIN no longer works. Generate a new one."
    )


def minutes_valid() -> int:
    return int(VALID_FOR.total_seconds() // 60)
