"""Which live groups a page may join. Apps register a resolver per group kind.

A page's socket URL is ``/ws/live/?watch=<kind>:<id>&watch=...``; each kind's resolver
loads the object through ``portal.access`` and returns the group name, or None when the
user may not see it. Unknown kinds and refused ids are silently left out.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs

from channels.db import database_sync_to_async

Resolver = Callable[[object, str], str | None]
_resolvers: dict[str, Resolver] = {}


def register(kind: str, resolver: Resolver) -> None:
    _resolvers[kind] = resolver


@database_sync_to_async
def allowed_groups(user, query_string: bytes) -> list[str]:
    groups = []
    for watch in parse_qs(query_string.decode(errors="replace")).get("watch", [])[:20]:
        kind, _, object_id = watch.partition(":")
        resolver = _resolvers.get(kind)
        if resolver is None:
            continue
        try:
            group = resolver(user, object_id)
        except Exception:  # Http404, PermissionDenied, bad ids: not watchable
            group = None
        if group:
            groups.append(group)
    return groups
