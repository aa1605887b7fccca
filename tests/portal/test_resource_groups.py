"""Resource groups: Azure's naming rules inline, rename, and deletion only when empty —
refused with what blocks it, found through any app's relation (a vault here)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal import services
from portal.models import ResourceGroup
from tests.portal.conftest import client_for

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "The name must be 1 to 90 characters long."),
        ("r" * 91, "The name must be 1 to 90 characters long."),
        ("rg with spaces", "can contain only letters, digits, underscores, hyphens, periods"),
        ("rg-web.", "The name cannot end with a period."),
        ("RG-WEB", "already exists in Contoso"),
    ],
)
def test_it_rejects_illegal_names_inline_with_the_rule(alice, subscription, group, name, message):
    response = client_for(alice).post(
        reverse("portal:resource-group-create"),
        {"subscription": str(subscription.pk), "name": name, "location": "West Europe"},
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page
    assert services.RESOURCE_GROUP_NAME_RULE in page
    assert ResourceGroup.objects.count() == 1


def test_live_validation_knows_the_names_in_the_chosen_subscription(alice, subscription, group):
    client = client_for(alice)
    url = reverse("portal:resource-group-create")
    data = {"subscription": str(subscription.pk), "_validate": "name"}
    taken = client.post(url, {**data, "name": "rg-web"}, **HTMX).content.decode()
    assert "already exists" in taken
    bad = client.post(url, {**data, "name": "rg web."}, **HTMX).content.decode()
    assert "cannot end with a period" in bad
    free = client.post(url, {**data, "name": "rg-db"}, **HTMX).content.decode()
    assert "<div>" not in free
    assert not ResourceGroup.objects.filter(name="rg-db").exists()


def test_an_unknown_region_or_missing_subscription_is_refused(alice, subscription):
    client = client_for(alice)
    url = reverse("portal:resource-group-create")
    no_sub = client.post(url, {"name": "rg-x", "location": "West Europe"})
    assert no_sub.status_code == 400
    assert "Choose a subscription." in no_sub.content.decode()
    bad_region = client.post(
        url, {"subscription": str(subscription.pk), "name": "rg-x", "location": "Mars"}
    )
    assert bad_region.status_code == 400
    assert "Choose one of the regions." in bad_region.content.decode()
    assert not ResourceGroup.objects.filter(name="rg-x").exists()


def test_rename_refuses_a_clash_and_accepts_a_new_name(alice, subscription, group):
    other = services.resource_group_create(
        subscription=subscription, name="rg-db", location="UK South"
    )
    client = client_for(alice)
    url = reverse("portal:resource-group-rename", args=[other.pk])
    clash = client.post(url, {"name": "RG-web"})
    assert clash.status_code == 400
    assert "already exists" in clash.content.decode()
    assert client.post(url, {"name": "rg-database"}).status_code == 302
    other.refresh_from_db()
    assert other.name == "rg-database"


def test_deleting_a_group_that_holds_a_vault_is_refused_naming_the_vault(
    alice, subscription, group
):
    from vaults.models import Vault

    Vault.objects.create(
        subscription=subscription, resource_group=group, name="vault-prod", location="West Europe"
    )
    client = client_for(alice)
    url = reverse("portal:resource-group-delete", args=[group.pk])
    confirm = client.get(url).content.decode()
    assert "vault-prod" in confirm
    response = client.post(url)
    assert response.status_code == 409
    message = response.content.decode()
    assert "Resource group &#x27;rg-web&#x27; is not empty" in message
    assert "vault-prod" in message
    assert ResourceGroup.objects.filter(pk=group.pk).exists()
    # The subscription is blocked by the group and by the vault.
    with pytest.raises(services.Refused, match=r"resource group .*rg-web"):
        services.subscription_delete(subscription=subscription)


def test_deleting_an_empty_group_removes_it(alice, group):
    response = client_for(alice).post(reverse("portal:resource-group-delete", args=[group.pk]))
    assert response.status_code == 302
    assert not ResourceGroup.objects.filter(pk=group.pk).exists()


def test_the_overview_lists_what_the_group_holds(alice, subscription, group):
    from vaults.models import Vault

    Vault.objects.create(
        subscription=subscription, resource_group=group, name="vault-prod", location="West Europe"
    )
    page = client_for(alice).get(reverse("portal:resource-group", args=[group.pk])).content.decode()
    assert "vault-prod" in page
    assert "1 vault" in page
