"""What every page of the shell needs: the bell's unread count and recent notifications,
whether to offer user management, and which left navigation entry the page belongs to."""

from portal import access


def shell(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    from portal.services import bell_context

    return {
        **bell_context(user),
        "nav_area": nav_area(request.path),
        "can_manage_users": access.can_manage_users(user),
    }


# Longest prefix first: a vault's Backup items live under /jobs/ but belong to the vault.
NAV_AREAS = (
    ("/jobs/vaults/", "vaults"),
    ("/backup-center/vaults/", "vaults"),
    ("/jobs/machines/", "machines"),
    ("/machines/vault/", "vaults"),
    ("/resource-groups/", "resource_groups"),
    ("/subscriptions/", "subscriptions"),
    ("/resources/", "resources"),
    ("/machines/", "machines"),
    ("/recover/", "recover"),
    ("/vaults/", "vaults"),
    ("/users/sign-in-activity/", "signin_activity"),
    ("/users/", "users"),
    ("/jobs/", "jobs"),
    ("/backup-center/", "backup_center"),
)


def nav_area(path: str) -> str:
    """The left navigation entry to highlight for ``path`` ("home" for /)."""
    if path == "/":
        return "home"
    return next((area for prefix, area in NAV_AREAS if path.startswith(prefix)), "")
