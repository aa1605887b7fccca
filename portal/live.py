"""Which live groups a page may join. Apps register a resolver per group kind.

A page's socket URL is ``/ws/live/?watch=<kind>:<id>&watch=...``; each kind's resolver
loads the object through ``portal.access`` and returns the group name, or None when the
user may not see it. Unknown kinds and refused ids are silently left out.

Access can end while a socket is open: ``still_allowed`` asks the resolvers again with
the user as the database has it now (``portal.consumers`` does, before passing a push on
and whenever ``portal.signals`` says the user's access changed).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

Resolver = Callable[[object, str], str | None]
Watch = tuple[str, str]  # (kind, object id)
_resolvers: dict[str, Resolver] = {}
MAX_WATCHES = 20


def register(kind: str, resolver: Resolver) -> None:
    _resolvers[kind] = resolver


def _resolve(user, kind: str, object_id: str) -> str | None:
    resolver = _resolvers.get(kind)
    if resolver is None:
        return None
    try:
        return resolver(user, object_id)
    except Exception:  # Http404, PermissionDenied, bad ids: not watchable
        return None


def may_listen(user) -> bool:
    """A socket is for an active user who has replaced any one-time password."""
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and not getattr(user, "password_change_required", False)
    )


def resolve_watches(user, query_string: bytes) -> dict[str, Watch]:
    """The groups the page may join, each with the watch that granted it."""
    groups: dict[str, Watch] = {}
    for watch in parse_qs(query_string.decode(errors="replace")).get("watch", [])[:MAX_WATCHES]:
        kind, _, object_id = watch.partition(":")
        group = _resolve(user, kind, object_id)
        if group:
            groups[group] = (kind, object_id)
    return groups


def still_allowed(user_id, watches: dict[str, Watch]) -> set[str] | None:
    """The groups of ``watches`` the user may still hear, or None when the user may no
    longer hold a socket at all (deleted, deactivated, one-time password, or a subscription
    of theirs now requires two-factor sign-in that they have not set up)."""
    from portal import two_factor
    from portal.models import User

    user = User.objects.filter(pk=user_id).first()
    if not may_listen(user) or two_factor.barred_subscriptions(user):
        return None
    return {
        group for group, (kind, object_id) in watches.items() if _resolve(user, kind, object_id)
    }


@database_sync_to_async
def allowed_groups(user, query_string: bytes) -> list[str]:
    return list(resolve_watches(user, query_string))
