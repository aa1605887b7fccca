"""Role assignments: Owners add members by user name, change roles, remove them; a
subscription always keeps an Owner."""

from __future__ import annotations

from django.urls import reverse

from portal import access, services
from portal.models import Membership, Role
from tests.portal.conftest import client_for, make_user


def test_an_owner_adds_a_member_by_user_name_case_insensitively(alice, subscription):
    make_user("Dave")
    response = client_for(alice).post(
        reverse("portal:subscription-access", args=[subscription.pk]),
        {"username": "dave", "role": Role.BACKUP_OPERATOR},
    )
    assert response.status_code == 302
    membership = Membership.objects.get(user__username="Dave")
    assert membership.role == Role.BACKUP_OPERATOR
    assert membership.user.notifications.filter(title="You were given access").exists()


def test_adding_an_unknown_or_existing_member_says_why(alice, subscription, bob_with):
    bob_with(Role.READER)
    client = client_for(alice)
    url = reverse("portal:subscription-access", args=[subscription.pk])
    unknown = client.post(url, {"username": "nobody", "role": Role.READER})
    assert unknown.status_code == 400
    assert "There is no active user named &#x27;nobody&#x27;." in unknown.content.decode()
    again = client.post(url, {"username": "bob", "role": Role.OWNER})
    assert again.status_code == 400
    assert "already has a role" in again.content.decode()
    bad_role = client.post(url, {"username": "charlie", "role": "emperor"})
    assert bad_role.status_code == 400
    assert Membership.objects.filter(subscription=subscription).count() == 2


def test_a_deactivated_user_cannot_be_added(alice, subscription):
    make_user("gone", is_active=False)
    response = client_for(alice).post(
        reverse("portal:subscription-access", args=[subscription.pk]),
        {"username": "gone", "role": Role.READER},
    )
    assert response.status_code == 400


def test_the_last_owner_can_be_neither_removed_nor_demoted(alice, subscription):
    own = Membership.objects.get(user=alice, subscription=subscription)
    client = client_for(alice)
    removed = client.post(
        reverse("portal:membership-remove", args=[subscription.pk, own.pk]), follow=True
    )
    assert "is the last Owner of Contoso" in removed.content.decode()
    demoted = client.post(
        reverse("portal:membership-role", args=[subscription.pk, own.pk]),
        {"role": Role.READER},
        follow=True,
    )
    assert "is the last Owner of Contoso" in demoted.content.decode()
    own.refresh_from_db()
    assert own.role == Role.OWNER


def test_with_a_second_owner_an_owner_may_step_down(alice, subscription, bob_with):
    bob_with(Role.OWNER)
    own = Membership.objects.get(user=alice, subscription=subscription)
    response = client_for(alice).post(
        reverse("portal:membership-remove", args=[subscription.pk, own.pk])
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:subscriptions")
    assert access.role_in(alice, subscription.pk) is None


def test_a_role_assignment_of_another_subscription_is_not_found(alice, subscription, charlie):
    elsewhere = services.subscription_create(name="Elsewhere", owner=charlie)
    theirs = Membership.objects.get(subscription=elsewhere)
    response = client_for(alice).post(
        reverse("portal:membership-remove", args=[subscription.pk, theirs.pk])
    )
    assert response.status_code == 404
    assert Membership.objects.filter(pk=theirs.pk).exists()


def test_changing_a_role_changes_what_the_member_may_do(alice, subscription, group, bob_with):
    bob = bob_with(Role.READER)
    membership = Membership.objects.get(user=bob)
    rename = reverse("portal:resource-group-rename", args=[group.pk])
    assert client_for(bob).get(rename).status_code == 403
    client_for(alice).post(
        reverse("portal:membership-role", args=[subscription.pk, membership.pk]),
        {"role": Role.CONTRIBUTOR},
    )
    assert client_for(bob).get(rename).status_code == 200
