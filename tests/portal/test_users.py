"""User management: one-time passwords shown once, deactivation, resets — and an Owner of
one subscription cannot touch the people of another."""

from __future__ import annotations

import re

from django.contrib.sessions.models import Session
from django.urls import reverse

from portal import services
from portal.models import Membership, Role, User
from tests.portal.conftest import client_for, make_user


def _shown_password(response) -> str:
    match = re.search(r'id="one-time-password">([^<]+)<', response.content.decode())
    assert match, "the one-time password is shown"
    return match.group(1)


def test_an_owner_creates_a_user_who_must_change_the_one_time_password(alice, subscription, client):
    response = client_for(alice).post(
        reverse("portal:user-create"),
        {
            "username": "erin",
            "full_name": "Erin Example",
            "email": "erin@example.com",
            "subscription": str(subscription.pk),
            "role": Role.BACKUP_OPERATOR,
        },
    )
    assert response.status_code == 200
    password = _shown_password(response)
    erin = User.objects.get(username="erin")
    assert erin.get_full_name() == "Erin Example"
    assert erin.password_change_required
    assert password not in erin.password  # only a hash is kept
    assert Membership.objects.get(user=erin).role == Role.BACKUP_OPERATOR

    signed_in = client.post(reverse("portal:login"), {"username": "erin", "password": password})
    assert signed_in.status_code == 302
    assert signed_in["Location"] == reverse("portal:password-change")
    changed = client.post(
        reverse("portal:password-change"),
        {
            "old_password": password,
            "new_password1": "a new long phrase 42",
            "new_password2": "a new long phrase 42",
        },
    )
    assert changed.status_code == 302
    erin.refresh_from_db()
    assert not erin.password_change_required
    assert erin.check_password("a new long phrase 42")
    # Still signed in after the change.
    assert client.get(reverse("portal:home")).status_code == 200


def test_bad_user_input_is_refused_with_the_reason(alice, subscription):
    client = client_for(alice)
    url = reverse("portal:user-create")
    cases = {
        "bad name!": "letters, digits and @ . + - _ only",
        "alice": "A user named &#x27;alice&#x27; already exists.",
        "": "Enter a user name.",
    }
    for username, message in cases.items():
        response = client.post(url, {"username": username, "subscription": str(subscription.pk)})
        assert response.status_code == 400
        assert message in response.content.decode()
    bad_email = client.post(
        url, {"username": "frank", "email": "nope", "subscription": str(subscription.pk)}
    )
    assert "Enter a valid email address" in bad_email.content.decode()
    # An Owner who is not an administrator must give the new user a role somewhere.
    no_sub = client.post(url, {"username": "frank"})
    assert "Choose one of your subscriptions" in no_sub.content.decode()
    assert not User.objects.filter(username="frank").exists()


def test_an_owner_cannot_grant_roles_on_a_subscription_they_do_not_own(
    alice, subscription, charlie
):
    theirs = services.subscription_create(name="Theirs", owner=charlie)
    response = client_for(alice).post(
        reverse("portal:user-create"), {"username": "mallory", "subscription": str(theirs.pk)}
    )
    assert response.status_code == 404
    assert not User.objects.filter(username="mallory").exists()


def test_the_first_admin_creates_users_without_a_role(db):
    assert services.first_admin_create()
    admin = User.objects.get(username="admin")
    response = client_for(admin).post(reverse("portal:user-create"), {"username": "greta"})
    assert response.status_code == 200
    assert User.objects.filter(username="greta", memberships__isnull=True).exists()


def test_deactivating_signs_the_user_out_everywhere(alice, subscription, bob_with):
    bob = bob_with(Role.READER)
    bob_client = client_for(bob)
    assert bob_client.get(reverse("portal:home")).status_code == 200
    response = client_for(alice).post(reverse("portal:user-deactivate", args=[bob.pk]))
    assert response.status_code == 302
    bob.refresh_from_db()
    assert not bob.is_active
    assert bob_client.get(reverse("portal:home")).status_code == 302
    assert not any(
        str(s.get_decoded().get("_auth_user_id")) == str(bob.pk) for s in Session.objects.all()
    )
    client_for(alice).post(reverse("portal:user-activate", args=[bob.pk]))
    bob.refresh_from_db()
    assert bob.is_active


def test_the_last_owner_of_a_subscription_cannot_be_deactivated(db):
    admin = make_user("root", is_superuser=True)
    alice = make_user("alice")
    services.subscription_create(name="Solo", owner=alice)
    response = client_for(admin).post(
        reverse("portal:user-deactivate", args=[alice.pk]), follow=True
    )
    assert "is the last Owner of Solo" in response.content.decode()
    alice.refresh_from_db()
    assert alice.is_active


def test_an_owner_cannot_touch_someone_who_also_belongs_elsewhere(
    alice, subscription, bob_with, charlie
):
    bob = bob_with(Role.READER)
    elsewhere = services.subscription_create(name="Elsewhere", owner=charlie)
    Membership.objects.create(user=bob, subscription=elsewhere, role=Role.READER)
    client = client_for(alice)
    assert client.post(reverse("portal:user-deactivate", args=[bob.pk])).status_code == 403
    assert client.post(reverse("portal:user-reset-password", args=[bob.pk])).status_code == 403
    # charlie is no member of alice's subscription: alice does not even see him.
    assert client.post(reverse("portal:user-deactivate", args=[charlie.pk])).status_code == 404
    # Nor can anyone use this page on themselves or on an administrator.
    assert client.post(reverse("portal:user-deactivate", args=[alice.pk])).status_code == 403
    bob.refresh_from_db()
    charlie.refresh_from_db()
    assert bob.is_active and charlie.is_active


def test_the_user_list_shows_only_members_of_subscriptions_i_own(
    alice, subscription, bob_with, charlie
):
    bob_with(Role.READER)
    page = client_for(alice).get(reverse("portal:users")).content.decode()
    assert "bob" in page
    assert "charlie" not in page


def test_a_password_reset_shows_a_new_one_time_password_and_lifts_a_lockout(
    alice, subscription, bob_with, client
):
    bob = bob_with(Role.READER)
    for _ in range(5):
        client.post(reverse("portal:login"), {"username": "bob", "password": "wrong"})
    response = client_for(alice).post(reverse("portal:user-reset-password", args=[bob.pk]))
    password = _shown_password(response)
    signed_in = client.post(reverse("portal:login"), {"username": "bob", "password": password})
    assert signed_in.status_code == 302
    assert signed_in["Location"] == reverse("portal:password-change")
