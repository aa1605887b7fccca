"""Sign-in throttling: a pause that grows per (user name, client address).

A stranger who guesses at an account from one address slows down only that pair: the
owner signing in from anywhere else is never held up, and behind a reverse proxy each
client is told apart by the forwarded address (``client_address``). The
``HAVEN_SIGNIN_FAILURE_LIMIT``-th failure in a row starts a pause of one second and each
further one doubles it, up to ``HAVEN_SIGNIN_COOLOFF_MINUTES``. While a pair is paused its
attempts are answered without checking the password, so guessing gains nothing; a
success clears the pair, an Owner's password reset clears every pair of the account, and
failures are forgotten after a day without one. The counts are rows
(``portal.models.SignInThrottle``), which every portal process shares. Each pause that
starts is one *Sign-in paused after failures* entry of the activity log (the callers:
``vaults.activity.signin_pause_record``).
"""

from __future__ import annotations

import ipaddress
import math
from datetime import timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal.models import SignInThrottle

FORGET_AFTER = timedelta(days=1)
FIRST_PAUSE_SECONDS = 1


def client_address(request) -> str:
    """The address of the client, as far as trusted proxies vouch for it.

    ``REMOTE_ADDR`` is the peer. Only when the peer is one of ``HAVEN_TRUSTED_PROXIES`` is
    the forwarded header read, from the right: each trusted proxy appends the address it
    received from, so the right-most address that is not a trusted proxy is the client.
    Everything to its left was written by the client and proves nothing.
    """
    remote = request.META.get("REMOTE_ADDR", "")
    if not _is_trusted_proxy(remote):
        return remote
    header = request.META.get(settings.HAVEN_PROXY_HEADER_META, "")
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    address = remote
    for hop in reversed(hops):
        address = hop
        if not _is_trusted_proxy(hop):
            break
    return address[:64]


def _is_trusted_proxy(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in settings.HAVEN_TRUSTED_PROXIES)


def _account(username: str) -> str:
    return username.strip().casefold()[:150]


def pause_for(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failures."""
    extra = failures - settings.HAVEN_SIGNIN_FAILURE_LIMIT
    if extra < 0:
        return 0
    longest = settings.HAVEN_SIGNIN_COOLOFF_MINUTES * 60
    return min(FIRST_PAUSE_SECONDS * 2 ** min(extra, 32), longest)


def signin_wait(*, username: str, address: str) -> int:
    """Whole seconds this pair must still wait before a try is checked (0: go ahead)."""
    row = SignInThrottle.objects.filter(account=_account(username), address=address).first()
    if row is None:
        return 0
    remaining = (row.paused_until - timezone.now()).total_seconds()
    return math.ceil(remaining) if remaining > 0 else 0


class Failure(NamedTuple):
    pause: int  # whole seconds of the pause this failure starts (0: none)
    failures: int  # failures of the pair in a row, this one included


@transaction.atomic
def signin_failed(*, username: str, address: str) -> Failure:
    """Count a failure; returns the pause it starts (each failure from the limit on starts
    one: the tries during a pause are not checked, so not counted) and the count."""
    now = timezone.now()
    SignInThrottle.objects.filter(last_failure__lt=now - FORGET_AFTER).delete()
    row, _ = SignInThrottle.objects.select_for_update().get_or_create(
        account=_account(username),
        address=address,
        defaults={"last_failure": now, "paused_until": now},
    )
    row.failures += 1
    pause = pause_for(row.failures)
    row.last_failure = now
    row.paused_until = now + timedelta(seconds=pause)
    row.save(update_fields=["failures", "last_failure", "paused_until"])
    return Failure(math.ceil(pause), row.failures)


def signin_succeeded(*, username: str, address: str) -> None:
    SignInThrottle.objects.filter(account=_account(username), address=address).delete()


def signin_forgive(*, username: str) -> None:
    """Forget every address's failures for the account (an Owner reset its password)."""
    SignInThrottle.objects.filter(account=_account(username)).delete()
