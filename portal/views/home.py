"""Home (the get-started path and recent resources), All resources and global search."""

from __future__ import annotations

from django.apps import apps
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


def _first(user, app_label: str, model_name: str, **filters):
    """One row of another app's model the user may see, or None (also when that app is
    not installed): Home follows the get-started path without the portal importing it."""
    try:
        model = apps.get_model(app_label, model_name)
    except LookupError:
        return None
    return access.for_user(user, model.objects.filter(**filters)).order_by("-pk").first()


@login_required
def home(request):
    user = request.user
    vault = _first(user, "vaults", "Vault")
    credential = _first(user, "vaults", "VaultCredential")
    machine = _first(user, "agents", "Machine", unregistered_at__isnull=True)
    policy = _first(user, "jobs", "BackupPolicy", machine__unregistered_at__isnull=True)
    backup = _first(user, "jobs", "RecoveryPoint")
    # Where each step's button leads: the next thing to do with what exists already.
    without_policy = (
        _first(user, "agents", "Machine", unregistered_at__isnull=True, backup_policy__isnull=True)
        if policy is None and machine is not None
        else None
    )
    has = {
        "subscription": access.for_user(user, Subscription).exists(),
        "resource_group": access.for_user(user, ResourceGroup).exists(),
        "vault": vault is not None,
        "prepared": credential is not None or machine is not None,
        "machine": machine is not None,
        "policy": policy is not None,
        "backup": backup is not None,
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
            "url": reverse("vaults:create") if not vault else reverse("vaults:list"),
            "action": "Create vault" if not vault else "Go to vaults",
            "done": has["vault"],
        },
        {
            "title": "Prepare infrastructure",
            "text": "In the vault, download the agent and the vault credentials.",
            "url": reverse("vaults:backup", args=[vault.pk]) if vault else reverse("vaults:list"),
            "action": "Prepare infrastructure" if vault else "Open a vault",
            "done": has["prepared"],
        },
        {
            "title": "Register the agent",
            "text": "Install the agent on a machine and register it with the vault credentials "
            "and your own passphrase.",
            "url": reverse("agents:vault-servers", args=[vault.pk])
            if vault and not machine
            else reverse("agents:list"),
            "action": "See machines",
            "done": has["machine"],
        },
        {
            "title": "Set a backup policy",
            "text": "Choose what to back up, when, and how long to keep it.",
            "url": reverse("jobs:policy", args=[(without_policy or machine).pk])
            if machine
            else reverse("agents:list"),
            "action": "Schedule backup",
            "done": has["policy"],
        },
        {
            "title": "Back up now",
            "text": "Start the first backup and watch the job move live.",
            "url": reverse("jobs:backup_now", args=[policy.machine_id])
            if policy
            else reverse("jobs:list"),
            "action": "Back up now" if policy else "See jobs",
            "done": has["backup"],
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
