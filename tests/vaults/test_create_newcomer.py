"""The vault create page for someone with no subscription to put a vault in: who may create
subscriptions gets a form to create one there and then (and comes back with it selected);
who may not is told whom to ask. The browser walk is tests/e2e/test_newcomer.py."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.models import Membership, Role, Subscription
from tests.support import builders

CREATE = "/vaults/create/"


@pytest.fixture
def admin(db):
    return builders.make_user(username="admin", is_superuser=True, is_staff=True)


def test_an_administrator_without_subscriptions_is_offered_one_on_the_vault_page(client, admin):
    client.force_login(admin)
    response = client.get(CREATE)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="first-subscription-form"' in body
    assert 'name="return_to" value="vault-create"' in body
    assert "Ask a" not in body


def test_creating_it_there_returns_to_the_vault_form_with_it_selected(client, admin):
    client.force_login(admin)
    response = client.post(
        reverse("portal:subscription-create"), {"name": "Production", "return_to": "vault-create"}
    )
    subscription = Subscription.objects.get(name="Production")
    assert response.status_code == 302
    assert response["Location"] == f"{CREATE}?subscription={subscription.pk}"
    assert Membership.objects.get(subscription=subscription).user == admin
    form = client.get(response["Location"]).content.decode()
    assert f'<option value="{subscription.pk}" selected>Production</option>' in form


def test_a_bad_name_keeps_the_way_back_to_the_vault_form(client, admin):
    client.force_login(admin)
    response = client.post(
        reverse("portal:subscription-create"), {"name": "9 lives!", "return_to": "vault-create"}
    )
    assert response.status_code == 400
    body = response.content.decode()
    assert 'name="return_to" value="vault-create"' in body
    assert f'href="{CREATE}"' in body  # Cancel goes back to the vault form
    assert not Subscription.objects.exists()


def test_return_to_names_no_url_so_it_cannot_redirect_elsewhere(client, admin):
    client.force_login(admin)
    response = client.post(
        reverse("portal:subscription-create"),
        {"name": "Production", "return_to": "https://evil.example/"},
    )
    subscription = Subscription.objects.get(name="Production")
    assert response["Location"] == reverse("portal:subscription", args=[subscription.pk])


def test_a_reader_is_told_to_ask_the_subscription_owners_by_name(client, alice, member):
    bob = member(Role.READER)
    client.force_login(bob)
    response = client.get(CREATE)
    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="first-subscription-form"' not in body
    assert "You are Reader on <strong>Contoso</strong>" in body
    assert "<strong>alice</strong>" in body
    assert "Contributor role there" in body


def test_a_user_in_no_subscription_is_told_to_ask_an_administrator_and_learns_no_names(
    client, bob, subscription
):
    client.force_login(bob)
    body = client.get(CREATE).content.decode()
    assert "Ask a Haven administrator" in body
    assert "alice" not in body
    assert 'id="first-subscription-form"' not in body


def test_who_may_create_subscriptions_gets_a_create_new_link_beside_the_picker(
    client, alice, subscription, member
):
    client.force_login(alice)
    body = client.get(CREATE).content.decode()
    assert 'class="inline-create" href="/subscriptions/create/?return_to=vault-create"' in body
    client.force_login(member(Role.CONTRIBUTOR))
    assert "inline-create" not in client.get(CREATE).content.decode()
