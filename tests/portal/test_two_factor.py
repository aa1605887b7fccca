"""Two-factor sign-in (portal.two_factor) with real TOTP codes: enrolment, the second sign-in
step, recovery codes, turning it off, the Owner's requirement and the reset of a lost phone."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal import two_factor
from portal.models import RecoveryCodes, Role
from tests.portal.conftest import PASSWORD, client_for, make_user
from tests.support.totp import code_for, code_for_key, key_from_secret_text
from vaults.models import ActivityEntry

Operation = ActivityEntry.Operation
PAGE = reverse("portal:two-factor")
CODE_PAGE = reverse("portal:signin-code")


def enrol(user) -> tuple[TOTPDevice, list[str]]:
    """``user`` with a confirmed authenticator app and ten recovery codes."""
    device = TOTPDevice.objects.create(user=user, name="app", confirmed=True)
    return device, two_factor.recovery_codes_regenerate(user=user)


def verified_client(user) -> Client:
    """Signed in and past the second factor (as ``two_factor.verify`` leaves a session)."""
    client = client_for(user)
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=user).persistent_id
    session.save()
    return client


def password_step(username: str, *, next_url: str = "") -> tuple[Client, object]:
    client = Client()
    data = {"username": username, "password": PASSWORD}
    if next_url:
        data["next"] = next_url
    return client, client.post(reverse("portal:login"), data)


def test_enrolment_shows_the_key_and_turns_on_only_with_a_current_code(alice):
    client = client_for(alice)
    assert "Set up two-factor sign-in" in client.get(PAGE).content.decode()
    page = client.post(PAGE, {"action": "start"}).content.decode()
    assert "<svg" in page
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)<', page).group(1)
    key = key_from_secret_text(secret)
    assert not two_factor.is_enrolled(alice)

    wrong = client.post(PAGE, {"action": "confirm", "code": "000000"})
    assert wrong.status_code == 400
    assert "That code is not the current one" in wrong.content.decode()
    assert not two_factor.is_enrolled(alice)

    done = client.post(PAGE, {"action": "confirm", "code": code_for_key(key)})
    assert done.status_code == 200
    assert done["Cache-Control"] == "no-store"
    codes = re.findall(r"<li>([a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4}-[a-z2-7]{4})</li>", done.text)
    assert len(set(codes)) == 10
    assert two_factor.is_enrolled(alice)
    stored = RecoveryCodes.objects.get(user=alice).digests
    assert len(stored) == 10 and not set(codes) & set(stored)  # only digests are kept
    # The session that confirmed is verified: the portal stays open.
    assert client.get(reverse("portal:home")).status_code == 200


def test_sign_in_asks_for_the_code_after_the_password_and_keeps_next(alice):
    device, _ = enrol(alice)
    client, response = password_step("alice", next_url="/subscriptions/")
    assert response["Location"] == f"{CODE_PAGE}?next=%2Fsubscriptions%2F"
    assert client.get(reverse("portal:home"))["Location"] == CODE_PAGE

    wrong = client.post(CODE_PAGE, {"code": "123456", "next": "/subscriptions/"})
    assert wrong.status_code == 400
    assert "That code is wrong or was already used" in wrong.content.decode()

    right = client.post(CODE_PAGE, {"code": code_for(device), "next": "/subscriptions/"})
    assert right["Location"] == "/subscriptions/"
    assert client.get(reverse("portal:home")).status_code == 200


def test_a_code_for_another_site_is_not_followed_after_the_code(alice):
    device, _ = enrol(alice)
    client, _ = password_step("alice")
    response = client.post(CODE_PAGE, {"code": code_for(device), "next": "https://evil.example/"})
    assert response["Location"] == reverse("portal:home")


def test_a_used_code_cannot_be_replayed(alice):
    device, _ = enrol(alice)
    code = code_for(device)
    first, _ = password_step("alice")
    assert first.post(CODE_PAGE, {"code": code}).status_code == 302
    second, _ = password_step("alice")
    assert second.post(CODE_PAGE, {"code": code}).status_code == 400
    assert second.get(reverse("portal:home"))["Location"] == CODE_PAGE


def test_a_recovery_code_signs_in_once(alice):
    _, codes = enrol(alice)
    typed = codes[3].upper().replace("-", " ")  # as copied from paper
    first, _ = password_step("alice")
    assert first.post(CODE_PAGE, {"code": typed}).status_code == 302
    assert first.get(reverse("portal:home")).status_code == 200
    assert two_factor.recovery_codes_left(alice) == 9
    second, _ = password_step("alice")
    assert second.post(CODE_PAGE, {"code": codes[3]}).status_code == 400


def test_failed_codes_pause_like_passwords_and_the_password_does_not_clear_them(alice):
    device, _ = enrol(alice)
    client, _ = password_step("alice")
    for _ in range(5):
        assert client.post(CODE_PAGE, {"code": "000000"}).status_code == 400
    paused = client.post(CODE_PAGE, {"code": code_for(device)})
    assert paused.status_code == 429
    assert paused["Retry-After"] == "1"
    assert "Too many failed sign-in attempts for this account from your address." in paused.text
    # Signing in again with the password does not buy fresh tries at the code.
    _, again = password_step("alice")
    assert again.status_code == 429


def test_new_recovery_codes_replace_the_old_ones(alice):
    _, old = enrol(alice)
    client = verified_client(alice)
    page = client.post(PAGE, {"action": "regenerate"}).text
    new = re.findall(r"<li>([a-z2-7-]{19})</li>", page)
    assert len(new) == 10 and not set(new) & set(old)
    device = RecoveryCodes.objects.get(user=alice)
    assert device.verify_token(old[0]) is False
    assert device.verify_token(new[0]) is True


def test_turning_it_off_needs_a_code_or_the_password(alice):
    enrol(alice)
    client = verified_client(alice)
    refused = client.post(PAGE, {"action": "disable", "password": "not it", "code": "000000"})
    assert refused.status_code == 400
    assert "Enter a current code from your app, or your password" in refused.text
    assert two_factor.is_enrolled(alice)
    assert client.post(PAGE, {"action": "disable", "password": PASSWORD}).status_code == 302
    assert not two_factor.is_enrolled(alice)
    assert not RecoveryCodes.objects.filter(user=alice).exists()
    _, response = password_step("alice")
    assert response["Location"] == reverse("portal:home")


# --- The Owner's requirement --------------------------------------------------------------
def test_a_member_of_a_requiring_subscription_is_sent_to_enrolment_and_told_why(
    subscription, bob_with
):
    bob = bob_with(Role.READER)
    subscription.require_two_factor = True
    subscription.save()
    client, signed_in = password_step("bob")
    assert signed_in["Location"] == reverse("portal:home")
    assert client.get(reverse("portal:home"))["Location"] == PAGE
    assert client.get(reverse("portal:subscriptions"))["Location"] == PAGE
    assert client.get("/api/v1/me/").status_code == 403
    page = client.get(PAGE).text
    assert "Set up two-factor sign-in to continue." in page
    assert "Contoso requires it of every member" in page
    # Once enrolled the portal opens; it cannot be turned off while Contoso requires it.
    client.post(PAGE, {"action": "start"})
    device = two_factor.enrolment_pending(bob)
    client.post(PAGE, {"action": "confirm", "code": code_for(device)})
    assert client.get(reverse("portal:home")).status_code == 200
    refused = client.post(PAGE, {"action": "disable", "password": PASSWORD})
    assert refused.status_code == 400
    assert "Contoso requires two-factor sign-in for its members" in refused.text
    assert two_factor.is_enrolled(bob)


def test_an_owner_without_a_second_factor_cannot_require_one(alice, subscription):
    url = reverse("portal:subscription-two-factor", args=[subscription.pk])
    client = client_for(alice)
    page = client.post(url, {"require": "on"}, follow=True).text
    assert "Set up your own two-factor sign-in first" in page
    subscription.refresh_from_db()
    assert subscription.require_two_factor is False


def test_the_owner_sets_the_requirement_and_it_is_audited(alice, subscription):
    url = reverse("portal:subscription-two-factor", args=[subscription.pk])
    enrol(alice)
    client = verified_client(alice)
    assert client.post(url, {"require": "on"}).status_code == 302
    subscription.refresh_from_db()
    assert subscription.require_two_factor is True
    assert client.post(url, {}).status_code == 302
    subscription.refresh_from_db()
    assert subscription.require_two_factor is False
    entries = ActivityEntry.objects.filter(operation=Operation.TWO_FACTOR_REQUIRE)
    assert [e.detail["required"] for e in entries.order_by("at", "pk")] == [True, False]
    assert {e.username for e in entries} == {"alice"}
    page = client.get(reverse("portal:subscription-access", args=[subscription.pk])).text
    assert "Require two-factor sign-in for every member of Contoso" in page


@pytest.mark.parametrize("role", [Role.CONTRIBUTOR, Role.BACKUP_OPERATOR, Role.READER])
def test_only_the_owner_may_set_the_requirement(subscription, bob_with, role):
    bob = bob_with(role)
    url = reverse("portal:subscription-two-factor", args=[subscription.pk])
    assert client_for(bob).post(url, {"require": "on"}).status_code == 403
    subscription.refresh_from_db()
    assert subscription.require_two_factor is False
    refused = ActivityEntry.objects.get(operation=Operation.TWO_FACTOR_REQUIRE)
    assert refused.outcome == ActivityEntry.Outcome.REFUSED


def test_an_outsider_does_not_see_the_subscription(subscription, charlie):
    url = reverse("portal:subscription-two-factor", args=[subscription.pk])
    assert client_for(charlie).post(url, {"require": "on"}).status_code == 404


# --- A lost phone -------------------------------------------------------------------------
def test_an_owner_resets_a_members_second_factor_and_it_is_audited(alice, subscription, bob_with):
    bob = bob_with(Role.CONTRIBUTOR)
    enrol(bob)
    response = client_for(alice).post(reverse("portal:user-reset-two-factor", args=[bob.pk]))
    assert response.status_code == 302
    assert not two_factor.is_enrolled(bob)
    assert not RecoveryCodes.objects.filter(user=bob).exists()
    entry = ActivityEntry.objects.get(operation=Operation.TWO_FACTOR_RESET)
    assert (entry.username, entry.resource_name, entry.subscription_id) == (
        "alice",
        "bob",
        subscription.pk,
    )
    _, signed_in = password_step("bob")
    assert signed_in["Location"] == reverse("portal:home")


def test_a_member_cannot_reset_the_owners_second_factor(alice, subscription, bob_with):
    bob = bob_with(Role.CONTRIBUTOR)
    enrol(alice)
    response = client_for(bob).post(reverse("portal:user-reset-two-factor", args=[alice.pk]))
    assert response.status_code == 403
    assert two_factor.is_enrolled(alice)


def test_the_administrator_resets_anyones_second_factor(alice, subscription):
    admin = make_user("root", is_superuser=True, is_staff=True)
    loner = make_user("dave")
    enrol(alice)
    enrol(loner)
    for user in (alice, loner):
        client_for(admin).post(reverse("portal:user-reset-two-factor", args=[user.pk]))
        assert not two_factor.is_enrolled(user)
    entries = ActivityEntry.objects.filter(operation=Operation.TWO_FACTOR_RESET)
    assert sorted((e.resource_name, e.subscription_id is None) for e in entries) == [
        ("alice", False),
        ("dave", True),
    ]
