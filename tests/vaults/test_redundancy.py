"""Storage redundancy: changeable until the first item is protected; GRS gets a secondary."""

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
        vault=deployed_vault, redundancy=Vault.Redundancy.ZONE, user=alice
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


def test_the_advice_follows_the_reference():
    assert "primary backup" in services.REDUNDANCY_ADVICE[Vault.Redundancy.GEO]
    assert "costs less" in services.REDUNDANCY_ADVICE[Vault.Redundancy.LOCAL]
