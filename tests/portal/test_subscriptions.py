"""Subscriptions: names, live validation, rename, delete only when empty."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal import services
from portal.models import Membership, Role, Subscription
from tests.portal.conftest import client_for

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "The name must be 1 to 64 characters long."),
        ("x" * 65, "The name must be 1 to 64 characters long."),
        ("-leading", "The name must start with a letter or a digit."),
        ("semi;colon", "can contain only letters, digits, spaces"),
    ],
)
def test_it_rejects_illegal_names_inline_with_the_rule(alice, subscription, name, message):
    response = client_for(alice).post(reverse("portal:subscription-create"), {"name": name})
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page
    assert 'class="field-error" id="name-errors"' in page
    assert services.SUBSCRIPTION_NAME_RULE in page
    assert Subscription.objects.count() == 1


def test_it_rejects_a_name_in_use_whatever_the_case(alice, subscription):
    response = client_for(alice).post(reverse("portal:subscription-create"), {"name": "CONTOSO"})
    assert response.status_code == 400
    assert "A subscription named &#x27;CONTOSO&#x27; already exists." in response.content.decode()


def test_live_validation_returns_only_the_errors_and_writes_nothing(alice, subscription):
    client = client_for(alice)
    url = reverse("portal:subscription-create")
    response = client.post(url, {"name": "-x", "_validate": "name"}, **HTMX)
    assert response.status_code == 200
    body = response.content.decode().strip()
    assert body.startswith('<div class="field-error" id="name-errors"')
    assert "must start with a letter or a digit" in body
    ok = client.post(url, {"name": "Fabrikam", "_validate": "name"}, **HTMX)
    assert "<div>" not in ok.content.decode()
    assert not Subscription.objects.filter(name="Fabrikam").exists()


def test_creating_makes_the_creator_owner_and_notifies(alice, subscription):
    response = client_for(alice).post(reverse("portal:subscription-create"), {"name": "Fabrikam"})
    created = Subscription.objects.get(name="Fabrikam")
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:subscription", args=[created.pk])
    assert Membership.objects.get(subscription=created).role == Role.OWNER
    assert alice.notifications.filter(title="Subscription created").count() == 2


def test_rename_keeps_the_id_and_checks_the_name(alice, subscription):
    client = client_for(alice)
    url = reverse("portal:subscription-rename", args=[subscription.pk])
    assert client.post(url, {"name": "bad;name"}).status_code == 400
    assert client.post(url, {"name": "Contoso Europe"}).status_code == 302
    subscription.refresh_from_db()
    assert subscription.name == "Contoso Europe"
    # Renaming to its own name in another case is not a clash with itself.
    assert client.post(url, {"name": "CONTOSO EUROPE"}).status_code == 302


def test_deleting_a_subscription_with_resource_groups_is_refused_naming_them(
    alice, subscription, group
):
    response = client_for(alice).post(reverse("portal:subscription-delete", args=[subscription.pk]))
    assert response.status_code == 409
    assert "it contains 1 resource group (rg-web)" in response.content.decode()
    assert Subscription.objects.filter(pk=subscription.pk).exists()


def test_deleting_an_empty_subscription_removes_it_and_its_role_assignments(alice, subscription):
    response = client_for(alice).post(reverse("portal:subscription-delete", args=[subscription.pk]))
    assert response.status_code == 302
    assert not Subscription.objects.filter(pk=subscription.pk).exists()
    assert not Membership.objects.filter(subscription_id=subscription.pk).exists()


def test_a_malformed_id_is_not_found(alice):
    response = client_for(alice).get("/subscriptions/not-a-uuid/")
    assert response.status_code == 404


def test_the_list_shows_my_role_and_counts_in_few_queries(
    alice, subscription, group, django_assert_max_num_queries
):
    for n in range(5):
        services.subscription_create(name=f"Extra {n}", owner=alice)
    client = client_for(alice)
    with django_assert_max_num_queries(12):
        response = client.get(reverse("portal:subscriptions"))
    page = response.content.decode()
    assert "Extra 4" in page
    assert "Owner" in page
