"""The resource registry behind global search, "All resources" and Home's recent list.

Each app registers a finder per kind of resource it owns, usually in its
``AppConfig.ready()``::

    from portal import search

    def find_vaults(user, query, limit, *, newest_first=False):
        qs = access.for_user(user, Vault).select_related("resource_group", "subscription")
        if query:
            qs = qs.filter(name__icontains=query)
        qs = qs.order_by("-created_at", "name") if newest_first else qs.order_by("name")
        return [search.Resource(kind="vault", type_label="Recovery Services vault", ...) for v in qs[:limit]]

    search.register("vault", find_vaults, label="Recovery Services vaults", order=30)

A finder gets the signed-in user, a (possibly empty) search text and a row limit, and
returns ``Resource`` rows the user may see — it must restrict through ``portal.access``.
Rows come by name; with ``newest_first=True`` (Home's recent list) the newest come first,
so the limit keeps the newest rather than the alphabetically first.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from django.urls import reverse


@dataclass(frozen=True)
class Resource:
    kind: str  # the registry key: "subscription", "resource_group", "vault", …
    type_label: str  # what "All resources" shows in its Type column
    name: str
    url: str
    subscription: str = ""  # the subscription's name, when the resource is in one
    resource_group: str = ""
    location: str = ""
    created_at: datetime.datetime | None = None
    extra: dict = field(default_factory=dict, compare=False)


class Finder(Protocol):
    def __call__(
        self, user, query: str, limit: int, *, newest_first: bool = False
    ) -> Iterable[Resource]: ...


@dataclass(frozen=True)
class Kind:
    key: str
    label: str  # plural, for the type filter and search result headings
    finder: Finder
    order: int


_kinds: dict[str, Kind] = {}


def register(kind: str, finder: Finder, *, label: str, order: int = 100) -> None:
    """Make a kind of resource searchable and listed; registering again replaces it."""
    _kinds[kind] = Kind(key=kind, label=label, finder=finder, order=order)


def kinds() -> list[Kind]:
    return sorted(_kinds.values(), key=lambda k: (k.order, k.label))


def find(user, query: str = "", *, kind: str | None = None, limit: int = 50) -> list[Resource]:
    """Resources the user may see whose name contains ``query``, by kind then name."""
    query = query.strip()[:100]
    results: list[Resource] = []
    for entry in kinds():
        if kind and entry.key != kind:
            continue
        results.extend(list(entry.finder(user, query, limit))[:limit])
    return results


def grouped(user, query: str, *, per_kind: int = 5) -> list[tuple[Kind, list[Resource]]]:
    """Search results grouped by kind, as the top bar's dropdown shows them."""
    groups = []
    for entry in kinds():
        rows = list(entry.finder(user, query.strip()[:100], per_kind))[:per_kind]
        if rows:
            groups.append((entry, rows))
    return groups


def recent(user, *, limit: int = 8) -> list[Resource]:
    """The newest resources across all kinds, for Home.

    Each kind gives its ``limit`` newest rows (one bounded query per kind); the newest
    ``limit`` overall are among them.
    """
    rows: list[Resource] = []
    for entry in kinds():
        rows.extend(list(entry.finder(user, "", limit, newest_first=True))[:limit])
    far_past = datetime.datetime.min.replace(tzinfo=datetime.UTC)
    rows.sort(key=lambda r: r.created_at or far_past, reverse=True)
    return rows[:limit]


# --- The portal's own kinds ---------------------------------------------------------------


def _find_subscriptions(
    user, query: str, limit: int, *, newest_first: bool = False
) -> list[Resource]:
    from portal import access
    from portal.models import Subscription

    qs = access.for_user(user, Subscription)
    if query:
        qs = qs.filter(name__icontains=query)
    qs = qs.order_by("-created_at", "name") if newest_first else qs.order_by("name")
    return [
        Resource(
            kind="subscription",
            type_label="Subscription",
            name=s.name,
            url=reverse("portal:subscription", args=[s.pk]),
            subscription=s.name,
            created_at=s.created_at,
        )
        for s in qs[:limit]
    ]


def _find_resource_groups(
    user, query: str, limit: int, *, newest_first: bool = False
) -> list[Resource]:
    from portal import access
    from portal.models import ResourceGroup

    qs = access.for_user(user, ResourceGroup).select_related("subscription")
    if query:
        qs = qs.filter(name__icontains=query)
    qs = qs.order_by("-created_at", "name") if newest_first else qs.order_by("name")
    return [
        Resource(
            kind="resource_group",
            type_label="Resource group",
            name=g.name,
            url=reverse("portal:resource-group", args=[g.pk]),
            subscription=g.subscription.name,
            location=g.location,
            created_at=g.created_at,
        )
        for g in qs[:limit]
    ]


def register_portal_kinds() -> None:
    register("subscription", _find_subscriptions, label="Subscriptions", order=10)
    register("resource_group", _find_resource_groups, label="Resource groups", order=20)
