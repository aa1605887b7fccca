"""Who an API request acts for: a personal access token (``Authorization: Bearer hvn_...``)
or the browser's session, which must carry the CSRF token for anything but a read.

A wrong, revoked or expired token is a failure of the sign-in throttle for the client
address (``portal.throttle``): after ``HAVEN_SIGNIN_FAILURE_LIMIT`` of them the address
is answered 429 with ``Retry-After`` until the pause ends, without the token being looked
at; each pause it starts is an activity log entry. A token whose owner has not enrolled in
two-factor sign-in reaches nothing of a subscription that requires it
(``portal.two_factor.barred_subscriptions``). Every authenticated user is held to
``HAVEN_API_RATE_PER_MINUTE`` requests a minute.
"""

from __future__ import annotations

import time

from django.conf import settings
from rest_framework import authentication, exceptions, throttling

from agents import api_auth
from agents.api_auth import RATE_WINDOW_SECONDS
from portal import throttle, tokens, two_factor
from vaults import activity


class TokenThrottled(exceptions.Throttled):
    default_detail = "Too many wrong access tokens from your address."


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, token = header.partition(" ")
        if keyword.lower() != self.keyword.lower():
            return None
        token = token.strip()
        address = throttle.client_address(request._request)
        wait = throttle.signin_wait(username=tokens.THROTTLE_ACCOUNT, address=address)
        if wait:
            raise TokenThrottled(wait=wait)
        try:
            user, row = tokens.token_authenticate(token)
        except tokens.TokenRefused as exc:
            failure = throttle.signin_failed(username=tokens.THROTTLE_ACCOUNT, address=address)
            activity.signin_pause_record(username=tokens.THROTTLE_ACCOUNT, failure=failure)
            raise exceptions.AuthenticationFailed(str(exc)) from None
        # A subscription that requires two-factor sign-in is out of this token's reach
        # while its owner has not enrolled (portal.access refuses it, 403).
        user.two_factor_barred = two_factor.barred_subscriptions(user)
        return user, row

    def authenticate_header(self, request):
        return f'{self.keyword} realm="api"'


class SessionAuthentication(authentication.SessionAuthentication):
    """The browser's session; CSRF is enforced for writes (DRF's rule). A user who must
    first replace a one-time password is refused here as everywhere else."""

    def authenticate(self, request):
        found = super().authenticate(request)
        if found is not None and found[0].password_change_required:
            raise exceptions.PermissionDenied("Change your one-time password first.")
        return found


class UserRateThrottle(throttling.BaseThrottle):
    """``HAVEN_API_RATE_PER_MINUTE`` requests a minute per user (per address before
    authentication), counted by the agent API's limiter: in the cache, shared by every
    portal process, and in this process while the cache is unreachable (never a 500)."""

    def allow_request(self, request, view):
        user = request.user
        who = f"user-{user.pk}" if user.is_authenticated else throttle.client_address(request)
        return not api_auth.over_limit("people-api-rate", who, settings.HAVEN_API_RATE_PER_MINUTE)

    def wait(self):
        return RATE_WINDOW_SECONDS - time.time() % RATE_WINDOW_SECONDS
