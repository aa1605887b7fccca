"""Portal-worker tasks for vaults: thin doors into ``vaults.services`` (queue "portal")."""

from __future__ import annotations

from celery import shared_task

from vaults import services
from vaults.models import Vault


@shared_task(name="vaults.deploy_vault", queue="portal")
def deploy_vault(vault_id: str) -> None:
    vault = Vault.objects.filter(pk=vault_id).first()
    if vault is None:  # deleted before the worker got to it
        return
    services.vault_deploy(vault=vault)


@shared_task(name="vaults.sample_usage", queue="portal")
def sample_usage() -> int:
    return services.vaults_usage_sample_all()
