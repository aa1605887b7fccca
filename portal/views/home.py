"""Home (the get-started path and recent resources), All resources and global search."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import reverse

from portal import access, search
from portal.models import ResourceGroup, Subscription

SORTS = {
    "name": lambda r: r.name.lower(),
    "type": lambda r: (r.type_label.lower(), r.name.lower()),
    "group": lambda r: (r.resource_group.lower(), r.name.lower()),
    "location": lambda r: (r.location.lower(), r.name.lower()),
    "subscription": lambda r: (r.subscription.lower(), r.name.lower()),
}


@login_required
def home(request):
    user = request.user
    has = {
        "subscription": access.for_user(user, Subscription).exists(),
        "resource_group": access.for_user(user, ResourceGroup).exists(),
        "vault": bool(search.find(user, kind="vault", limit=1)),
        "machine": bool(search.find(user, kind="machine", limit=1)),
    }
    steps = [
        {
            "title": "Create a subscription",
            "text": "The boundary for access and billing: everyone you add gets a role on it.",
            "url": reverse("portal:subscription-create"),
            "action": "Create subscription",
            "done": has["subscription"],
        },
        {
            "title": "Create a resource group",
            "text": "A folder for related resources, such as the vaults of one team.",
            "url": reverse("portal:resource-group-create"),
            "action": "Create resource group",
            "done": has["resource_group"],
        },
        {
            "title": "Create a Recovery Services vault",
            "text": "Where backups are stored, with the redundancy you choose.",
            "url": "/vaults/",
            "action": "Go to vaults",
            "done": has["vault"],
        },
        {
            "title": "Prepare infrastructure",
            "text": "In the vault, download the agent and the vault credentials.",
            "url": "/vaults/",
            "action": "Open a vault",
            "done": has["machine"],
        },
        {
            "title": "Register the agent",
            "text": "Install the agent on a machine and register it with the vault credentials "
            "and your own passphrase.",
            "url": "/machines/",
            "action": "See machines",
            "done": has["machine"],
        },
        {
            "title": "Set a backup policy",
            "text": "Choose what to back up, when, and how long to keep it.",
            "url": "/machines/",
            "action": "Schedule backup",
            "done": False,
        },
        {
            "title": "Back up now",
            "text": "Start the first backup and watch the job move live.",
            "url": "/jobs/",
            "action": "See jobs",
            "done": False,
        },
    ]
    next_step = next((i for i, step in enumerate(steps) if not step["done"]), None)
    return render(
        request,
        "portal/home.html",
        {
            "steps": steps,
            "next_step": next_step,
            "recent": search.recent(user, limit=8),
            "can_create_subscriptions": access.can_create_subscriptions(user),
        },
    )


def _resources_context(request, query: str) -> dict:
    kind = request.GET.get("type", "")
    kinds = search.kinds()
    if kind not in {k.key for k in kinds}:
        kind = ""
    sort = request.GET.get("sort", "name")
    key = sort.removeprefix("-")
    if key not in SORTS:
        sort, key = "name", "name"
    rows = search.find(request.user, query, kind=kind or None, limit=500)
    rows.sort(key=SORTS[key], reverse=sort.startswith("-"))
    return {
        "rows": rows,
        "query": query,
        "kind": kind,
        "kinds": kinds,
        "sort": sort,
        "search_query": query,
    }


@login_required
def resources(request):
    return render(
        request, "portal/resources.html", _resources_context(request, request.GET.get("q", ""))
    )


@login_required
def search_view(request):
    """The top bar's live results (htmx); without htmx, All resources filtered by the text."""
    query = request.GET.get("q", "").strip()
    if request.htmx:
        groups = search.grouped(request.user, query) if query else []
        return render(request, "portal/_search_results.html", {"groups": groups, "query": query})
    return render(request, "portal/resources.html", _resources_context(request, query))
