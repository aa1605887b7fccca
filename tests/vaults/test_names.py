"""The vault naming rules (vault_name_problems) and their enforcement in vault_create."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from tests.vaults.conftest import make_vault
from vaults import services
from vaults.models import Vault

pytestmark = pytest.mark.usefixtures("vault_env")


def rules(name, subscription=None):
    return [p.rule for p in services.vault_name_problems(name=name, subscription=subscription)]


@pytest.mark.parametrize("name", ["ab", "Vault1", "my-vault-2", "a" * 50, "A-"])
def test_it_accepts_valid_names(name, subscription):
    assert rules(name, subscription) == []


def test_it_rejects_a_single_character():
    assert rules("a") == ["length"]


def test_it_rejects_names_over_fifty_characters():
    problems = services.vault_name_problems(name="a" * 51, subscription=None)
    assert [p.rule for p in problems] == ["length"]
    assert "2 to 50 characters" in problems[0].message and "51" in problems[0].message


def test_it_rejects_names_starting_with_a_digit():
    assert rules("1vault") == ["start"]


def test_it_rejects_names_starting_with_a_hyphen():
    assert rules("-vault") == ["start"]


def test_it_rejects_names_starting_with_a_non_ascii_letter():
    assert "start" in rules("évault")


@pytest.mark.parametrize("name", ["my_vault", "my vault", "vault.1", "vault!", "vaült"])
def test_it_rejects_characters_other_than_letters_digits_and_hyphens(name):
    assert rules(name) == ["characters"]


def test_the_characters_message_names_the_offending_characters():
    (problem,) = services.vault_name_problems(name="my_vault!", subscription=None)
    assert "'!'" in problem.message and "'_'" in problem.message


def test_it_names_every_rule_that_fails_at_once():
    assert rules("9_") == ["start", "characters"]
    assert rules("_" * 51) == ["length", "start", "characters"]


def test_it_rejects_a_name_used_in_the_subscription_ignoring_case(subscription, resource_group):
    make_vault(resource_group, name="Prod-Vault")
    problems = services.vault_name_problems(name="prod-vault", subscription=subscription)
    assert [p.rule for p in problems] == ["unique"]
    assert "Contoso" in problems[0].message


def test_the_same_name_is_fine_in_another_subscription(subscription, resource_group, charlie):
    from portal.models import Subscription

    make_vault(resource_group, name="prod-vault")
    other = Subscription.objects.get(name="Fabrikam")
    assert rules("prod-vault", other) == []


def test_a_subscription_holds_at_most_500_vaults(subscription, resource_group):
    Vault.objects.bulk_create(
        Vault(subscription=subscription, resource_group=resource_group, name=f"v{i}", location="x")
        for i in range(services.MAX_VAULTS_PER_SUBSCRIPTION)
    )
    problems = services.vault_name_problems(name="one-more", subscription=subscription)
    assert [p.rule for p in problems] == ["limit"]
    assert "500" in problems[0].message


def test_499_vaults_still_leave_room(subscription, resource_group):
    Vault.objects.bulk_create(
        Vault(subscription=subscription, resource_group=resource_group, name=f"v{i}", location="x")
        for i in range(services.MAX_VAULTS_PER_SUBSCRIPTION - 1)
    )
    assert rules("one-more", subscription) == []


def test_vault_create_checks_the_name_again(subscription, resource_group, alice):
    make_vault(resource_group, name="taken")
    with pytest.raises(ValidationError) as caught:
        services.vault_create(
            subscription=subscription,
            resource_group=resource_group,
            name="TAKEN",
            location="West Europe",
            created_by=alice,
        )
    assert "already exists" in caught.value.message_dict["name"][0]
    with pytest.raises(ValidationError) as caught:
        services.vault_create(
            subscription=subscription,
            resource_group=resource_group,
            name="1_bad",
            location="West Europe",
            created_by=alice,
        )
    assert len(caught.value.message_dict["name"]) == 2
    assert Vault.objects.count() == 1


def test_vault_create_refuses_a_region_not_configured(subscription, resource_group, alice):
    with pytest.raises(ValidationError) as caught:
        services.vault_create(
            subscription=subscription,
            resource_group=resource_group,
            name="good",
            location="Mars North",
            created_by=alice,
        )
    assert "location" in caught.value.message_dict


def test_vault_create_refuses_bad_tags(subscription, resource_group, alice):
    with pytest.raises(ValidationError) as caught:
        services.vault_create(
            subscription=subscription,
            resource_group=resource_group,
            name="good",
            location="West Europe",
            created_by=alice,
            tags={"a/b": "x", "ok": "v" * 257},
        )
    assert len(caught.value.message_dict["tags"]) == 2


def test_the_wizard_and_vault_create_word_a_region_alike(subscription, resource_group, alice):
    shown = services.vault_create_problems(name="good", location="Mars North", subscription=None)
    assert shown == {"location": ["Choose a region from the list."]}
    with pytest.raises(ValidationError) as caught:
        services.vault_create(
            subscription=subscription,
            resource_group=resource_group,
            name="good",
            location="Mars North",
            created_by=alice,
        )
    assert caught.value.message_dict["location"] == shown["location"]
