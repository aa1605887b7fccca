"""Role assignments in the activity log (subscription-wide: no vault): added, changed and
removed by an Owner, the last Owner's demotion refused, a Contributor's attempt refused."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.models import Membership, Role
from tests.support.activity import one_entry
from vaults.activity import Operation, Outcome
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db


def test_an_owners_role_changes_are_recorded(client, alice, bob, subscription):
    client.force_login(alice)
    client.post(
        reverse("portal:subscription-access", args=[subscription.pk]),
        {"username": "bob", "role": Role.READER},
    )
    membership = Membership.objects.get(user=bob)
    client.post(
        reverse("portal:membership-role", args=[subscription.pk, membership.pk]),
        {"role": Role.CONTRIBUTOR},
    )
    client.post(reverse("portal:membership-remove", args=[subscription.pk, membership.pk]))
    added = one_entry(operation=Operation.ROLE_ADD, username="alice", resource_name="bob")
    assert added.detail == {"user": "bob", "role": "reader"}
    assert (added.subscription_id, added.vault_id) == (subscription.pk, None)
    changed = one_entry(operation=Operation.ROLE_CHANGE, outcome=Outcome.SUCCEEDED)
    assert changed.detail == {"user": "bob", "from": "reader", "to": "contributor"}
    removed = one_entry(operation=Operation.ROLE_REMOVE)
    assert removed.detail == {"user": "bob", "role": "contributor"}


def test_demoting_the_last_owner_is_refused_and_recorded(client, alice, subscription):
    client.force_login(alice)
    own = Membership.objects.get(user=alice)
    client.post(
        reverse("portal:membership-role", args=[subscription.pk, own.pk]), {"role": Role.READER}
    )
    entry = one_entry(operation=Operation.ROLE_CHANGE, outcome=Outcome.REFUSED)
    assert "last Owner" in entry.reason
    own.refresh_from_db()
    assert own.role == Role.OWNER


def test_a_contributor_cannot_change_roles_and_that_is_recorded(
    client, alice, member, subscription
):
    bob = member(Role.CONTRIBUTOR)
    client.force_login(bob)
    own = Membership.objects.get(user=alice)
    url = reverse("portal:membership-role", args=[subscription.pk, own.pk])
    assert client.post(url, {"role": Role.READER}).status_code == 403
    one_entry(
        operation=Operation.ROLE_CHANGE,
        outcome=Outcome.REFUSED,
        username="bob",
        resource_name="alice",
    )
    assert ActivityEntry.objects.count() == 1
