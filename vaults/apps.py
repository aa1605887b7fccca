from django.apps import AppConfig

USAGE_SAMPLE_SECONDS = 3600


class VaultsConfig(AppConfig):
    name = "vaults"

    def ready(self):
        from portal import live
        from portal.celery import register_periodic

        live.register("vault", _vault_group)
        # Hourly; a sample is written only when usage changed or a day passed since the last.
        register_periodic("vaults.sample_usage", "vaults.sample_usage", USAGE_SAMPLE_SECONDS)


def _vault_group(user, vault_id: str) -> str | None:
    """Pages may watch a vault they can read (``?watch=vault:<id>``)."""
    from portal.access import get_for_user
    from vaults.models import Vault
    from vaults.services import group_for_vault

    vault = get_for_user(user, Vault, pk=vault_id)
    return group_for_vault(vault.pk)
