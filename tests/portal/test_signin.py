"""Signing in and out, and pausing failed sign-ins per (account, address)."""

from __future__ import annotations

from django.urls import reverse

from tests.portal.conftest import PASSWORD, make_user


def test_a_wrong_password_gets_a_message(alice, client):
    response = client.post(reverse("portal:login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "The user name or password is wrong" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_right_password_signs_in_and_sign_out_needs_a_post(alice, client):
    response = client.post(reverse("portal:login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:home")
    assert client.get(reverse("portal:logout")).status_code == 405
    assert client.post(reverse("portal:logout")).status_code == 302
    assert client.get(reverse("portal:home")).status_code == 302


def test_the_sixth_try_is_paused_even_with_the_right_password(alice, client):
    for _ in range(5):
        client.post(reverse("portal:login"), {"username": "alice", "password": "wrong"})
    response = client.post(reverse("portal:login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 429
    assert response["Retry-After"] == "1"
    page = response.content.decode()
    assert "Too many failed sign-in attempts for this account from your address." in page
    assert "Try again in 1 second;" in page
    assert "_auth_user_id" not in client.session


def test_the_account_name_is_counted_whatever_its_case(alice, client):
    for name in ("alice", "Alice", "ALICE", "alice ", "aLice"):
        client.post(reverse("portal:login"), {"username": name, "password": "wrong"})
    response = client.post(reverse("portal:login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 429


def test_an_inactive_account_cannot_sign_in(db, client):
    make_user("gone", is_active=False)
    response = client.post(reverse("portal:login"), {"username": "gone", "password": PASSWORD})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_sign_in_returns_to_the_page_asked_for_but_never_off_site(alice, client):
    url = reverse("portal:login")
    inside = client.post(
        f"{url}?next=/resources/",
        {"username": "alice", "password": PASSWORD, "next": "/resources/"},
    )
    assert inside["Location"] == "/resources/"
    client.post(reverse("portal:logout"))
    outside = client.post(
        url, {"username": "alice", "password": PASSWORD, "next": "https://evil.example/"}
    )
    assert outside["Location"] == reverse("portal:home")


def test_wrong_old_password_does_not_change_it(alice):
    from tests.portal.conftest import client_for

    client = client_for(alice)
    response = client.post(
        reverse("portal:password-change"),
        {
            "old_password": "nope",
            "new_password1": "a new long phrase 42",
            "new_password2": "a new long phrase 42",
        },
    )
    assert response.status_code == 400
    assert "Your old password was entered incorrectly" in response.content.decode()
    short = client.post(
        reverse("portal:password-change"),
        {"old_password": PASSWORD, "new_password1": "short", "new_password2": "short"},
    )
    assert "at least 10 characters" in short.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)
