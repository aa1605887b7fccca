from django.apps import AppConfig

USAGE_SAMPLE_SECONDS = 3600


class VaultsConfig(AppConfig):
    name = "vaults"

    def ready(self):
        from portal import live, search
        from portal.celery import register_periodic

        live.register("vault", _vault_group)
        search.register("vault", find_vaults, label="Recovery Services vaults", order=30)
        # Hourly; a sample is written only when usage changed or a day passed since the last.
        register_periodic("vaults.sample_usage", "vaults.sample_usage", USAGE_SAMPLE_SECONDS)


def _vault_group(user, vault_id: str) -> str | None:
    """Pages may watch a vault they can read (``?watch=vault:<id>``)."""
    from portal.access import get_for_user
    from vaults.models import Vault
    from vaults.services import group_for_vault

    vault = get_for_user(user, Vault, pk=vault_id)
    return group_for_vault(vault.pk)


def find_vaults(user, query: str, limit: int, *, newest_first: bool = False):
    """Vaults for global search, All resources and Home (portal.search's registry)."""
    from django.urls import reverse

    from portal import access, search
    from vaults.models import Vault

    qs = access.for_user(user, Vault).select_related("subscription", "resource_group")
    if query:
        qs = qs.filter(name__icontains=query)
    qs = qs.order_by("-created_at", "name") if newest_first else qs.order_by("name")
    return [
        search.Resource(
            kind="vault",
            type_label="Recovery Services vault",
            name=v.name,
            # A vault still deploying (or failed) opens on its deployment, as the list does.
            url=reverse(
                "vaults:overview" if v.state == Vault.State.READY else "vaults:deployment",
                args=[v.pk],
            ),
            subscription=v.subscription.name,
            resource_group=v.resource_group.name,
            location=v.location,
            created_at=v.created_at,
        )
        for v in qs[:limit]
    ]
