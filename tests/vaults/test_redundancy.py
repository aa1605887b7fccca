"""Storage redundancy: changeable until the first item is protected; GRS gets a secondary,
and is offered only where the portal has one; ZRS only on a zone-redundant Azure account."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from tests.vaults.conftest import make_machine
from vaults import selectors, services, storage
from vaults.models import Vault

pytestmark = pytest.mark.usefixtures("vault_env")


def test_a_new_vault_is_geo_redundant(deployed_vault):
    assert deployed_vault.redundancy == Vault.Redundancy.GEO


def test_switching_to_locally_redundant_removes_the_empty_secondary(deployed_vault, alice):
    vault = services.vault_redundancy_set(
        vault=deployed_vault, redundancy=Vault.Redundancy.LOCAL, user=alice
    )
    assert vault.redundancy == Vault.Redundancy.LOCAL
    assert vault.secondary_container == ""
    assert not storage.secondary_account().container_exists(vault.container)


def test_switching_back_to_geo_provisions_the_secondary(deployed_vault, alice):
    services.vault_redundancy_set(
        vault=deployed_vault, redundancy=Vault.Redundancy.LOCAL, user=alice
    )
    vault = services.vault_redundancy_set(
        vault=deployed_vault, redundancy=Vault.Redundancy.GEO, user=alice
    )
    assert vault.secondary_container == vault.container
    assert storage.secondary_account().container_exists(vault.container)


def test_it_is_locked_once_a_machine_is_registered(deployed_vault, alice):
    make_machine(deployed_vault)
    reason = selectors.vault_redundancy_locked_reason(deployed_vault)
    assert "1 registered machine" in reason and "before the first item is protected" in reason
    with pytest.raises(ValidationError) as caught:
        services.vault_redundancy_set(
            vault=deployed_vault, redundancy=Vault.Redundancy.LOCAL, user=alice
        )
    assert "1 registered machine" in caught.value.message_dict["redundancy"][0]
    deployed_vault.refresh_from_db()
    assert deployed_vault.redundancy == Vault.Redundancy.GEO


def test_an_unregistered_machine_does_not_lock_it(deployed_vault):
    from django.utils import timezone

    make_machine(deployed_vault, unregistered_at=timezone.now())
    assert selectors.vault_redundancy_locked_reason(deployed_vault) is None


def test_another_app_can_lock_it(deployed_vault, alice, monkeypatch):
    monkeypatch.setattr(selectors, "_protection_checks", [lambda v: "3 recovery points exist."])
    assert selectors.vault_redundancy_locked_reason(deployed_vault) == "3 recovery points exist."


def test_an_unknown_value_is_refused(deployed_vault, alice):
    with pytest.raises(ValidationError):
        services.vault_redundancy_set(vault=deployed_vault, redundancy="xyz", user=alice)


def test_the_advice_says_what_is_copied_where(vault_env):
    geo = services.redundancy_advice(Vault.Redundancy.GEO)
    assert "primary backup" in geo and storage.secondary_account().describe() in geo
    local = services.redundancy_advice(Vault.Redundancy.LOCAL)
    assert "costs less" in local and "nothing is copied elsewhere" in local


def test_the_zone_advice_does_not_call_a_local_directory_an_azure_account(vault_env):
    """On the embedded defaults the Backup Configuration page read "Backups are stored once,
    in local directory /srv/haven/var/storage, an Azure account that itself keeps copies in
    separate availability zones"."""
    zone = services.redundancy_advice(Vault.Redundancy.ZONE)
    account = storage.primary_account()
    if isinstance(account, storage.AzureStorageAccount):  # pass 2, on Azurite
        assert f"in {account.describe()}, an Azure account that itself keeps copies" in zone
    else:
        assert account.describe() not in zone
        assert "in an Azure storage account that itself keeps copies" in zone


def test_without_a_secondary_geo_is_refused_and_new_vaults_are_local(deployed_vault, alice):
    services.vault_redundancy_set(
        vault=deployed_vault, redundancy=Vault.Redundancy.LOCAL, user=alice
    )
    from django.conf import settings

    settings.SECONDARY_STORAGE_DIR = None
    settings.SECONDARY_STORAGE_CONNECTION_STRING = None
    with pytest.raises(ValidationError) as caught:
        services.vault_redundancy_set(
            vault=deployed_vault, redundancy=Vault.Redundancy.GEO, user=alice
        )
    assert "No secondary storage" in caught.value.message_dict["redundancy"][0]
    assert services.default_redundancy() == Vault.Redundancy.LOCAL


def test_zone_redundancy_is_refused_on_storage_without_zones(deployed_vault, alice, monkeypatch):
    monkeypatch.setattr(storage, "zone_redundancy_reason", lambda: "no zones here")
    with pytest.raises(ValidationError, match="no zones here"):
        services.vault_redundancy_set(
            vault=deployed_vault, redundancy=Vault.Redundancy.ZONE, user=alice
        )


def test_cross_region_restore_stays_on_and_keeps_the_vault_geo_redundant(deployed_vault, alice):
    vault = services.vault_cross_region_restore_enable(vault=deployed_vault, user=alice)
    assert vault.cross_region_restore
    with pytest.raises(ValidationError, match="cannot be turned off"):
        services.vault_redundancy_set(vault=vault, redundancy=Vault.Redundancy.LOCAL, user=alice)


def test_cross_region_restore_needs_geo_redundancy(deployed_vault, alice):
    vault = services.vault_redundancy_set(
        vault=deployed_vault, redundancy=Vault.Redundancy.LOCAL, user=alice
    )
    with pytest.raises(ValidationError, match="Cross Region Restore needs"):
        services.vault_cross_region_restore_enable(vault=vault, user=alice)


def test_every_page_names_the_setting_storage_replication_type(
    client, deployed_vault, alice, subscription
):
    """One name for one setting, Azure's (Backup Configuration: "Storage replication
    type"), wherever it is shown, set, locked or logged."""
    client.force_login(alice)
    vault = deployed_vault
    pages = {
        "overview": f"/vaults/{vault.pk}/",
        "properties": f"/vaults/{vault.pk}/properties/",
        "backup configuration": f"/vaults/{vault.pk}/properties/backup-configuration/",
    }
    shown = {name: client.get(url).content.decode() for name, url in pages.items()}
    review = client.post(
        "/vaults/create/",
        {
            "step": "tags", "action": "next", "subscription": str(subscription.pk),
            "resource_group": str(vault.resource_group_id), "name": "vault-two",
            "location": "West Europe", "tag_name": [""], "tag_value": [""],
        },
    )  # fmt: skip
    assert review.context["step"] == "review"
    shown["create: review"] = review.content.decode()
    for name, html in shown.items():
        assert "Storage replication type" in html, name
        assert "storage redundancy" not in html.lower(), name
    services.vault_redundancy_set(vault=vault, redundancy=Vault.Redundancy.LOCAL, user=alice)
    make_machine(vault)
    html = client.get(pages["backup configuration"]).content.decode()
    assert "The storage replication type can no longer be changed." in html
    assert "The storage replication type can only be changed before" in html
    html = client.get(f"/vaults/{vault.pk}/activity/").content.decode()
    assert "Change storage replication type" in html
