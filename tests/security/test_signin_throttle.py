"""Attacks on sign-in: locking the owner out by user name, locking everyone out through
the reverse proxy, dodging the count with a forged X-Forwarded-For, guessing on."""

from __future__ import annotations

import ipaddress

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from portal.models import SignInThrottle
from tests.support.builders import PASSWORD

PROXY = "10.0.0.9"


@pytest.fixture
def behind_proxy(settings):
    settings.HAVEN_TRUSTED_PROXIES = (ipaddress.ip_network(f"{PROXY}/32"),)


def _sign_in(password: str, *, username: str = "alice", **meta):
    client = Client()
    response = client.post(
        reverse("portal:login"), {"username": username, "password": password}, **meta
    )
    return response, "_auth_user_id" in client.session


def _via_proxy(client_ip: str, forged: str = "") -> dict:
    forwarded = f"{forged}, {client_ip}" if forged else client_ip
    return {"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": forwarded}


def test_a_stranger_guessing_from_one_address_cannot_lock_the_owner_out(alice):
    for _ in range(20):
        _sign_in("guess", REMOTE_ADDR="203.0.113.5")
    assert _sign_in(PASSWORD, REMOTE_ADDR="203.0.113.5")[0].status_code == 429
    response, signed_in = _sign_in(PASSWORD, REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 302
    assert signed_in


def test_behind_the_proxy_one_client_failing_does_not_lock_out_another(alice, behind_proxy):
    for _ in range(10):
        _sign_in("guess", **_via_proxy("203.0.113.5"))
    assert _sign_in(PASSWORD, **_via_proxy("203.0.113.5"))[0].status_code == 429
    response, signed_in = _sign_in(PASSWORD, **_via_proxy("198.51.100.7"))
    assert response.status_code == 302
    assert signed_in


def test_a_forged_forwarded_for_from_an_untrusted_peer_does_not_reset_the_count(
    alice, behind_proxy
):
    for n in range(5):
        _sign_in("guess", REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    response, signed_in = _sign_in(
        PASSWORD, REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR="192.0.2.200"
    )
    assert response.status_code == 429
    assert not signed_in


def test_an_address_written_by_the_client_before_the_proxy_is_not_believed(alice, behind_proxy):
    for n in range(5):
        _sign_in("guess", **_via_proxy("203.0.113.5", forged=f"192.0.2.{n}"))
    response, signed_in = _sign_in(PASSWORD, **_via_proxy("203.0.113.5", forged="192.0.2.99"))
    assert response.status_code == 429
    assert not signed_in
    assert set(SignInThrottle.objects.values_list("address", flat=True)) == {"203.0.113.5"}


def test_guessing_on_while_paused_gains_nothing_and_the_pause_grows(alice, settings):
    settings.HAVEN_SIGNIN_COOLOFF_MINUTES = 1
    for _ in range(4):
        assert _sign_in("guess", REMOTE_ADDR="203.0.113.5")[0].status_code == 200
    waits = []
    for _ in range(8):
        guess, _ = _sign_in("guess", REMOTE_ADDR="203.0.113.5")
        assert guess.status_code == 200  # the last pause had passed: this guess was checked
        paused, signed_in = _sign_in(PASSWORD, REMOTE_ADDR="203.0.113.5")
        assert paused.status_code == 429
        assert not signed_in  # even the right password is not checked while paused
        assert "Try again in" in paused.content.decode()
        waits.append(int(paused["Retry-After"]))
        SignInThrottle.objects.update(paused_until=timezone.now())  # let the pause pass
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]


def test_the_right_password_after_the_pause_signs_the_owner_in(alice):
    for _ in range(6):
        _sign_in("guess", REMOTE_ADDR="203.0.113.5")
    SignInThrottle.objects.update(paused_until=timezone.now())
    response, signed_in = _sign_in(PASSWORD, REMOTE_ADDR="203.0.113.5")
    assert response.status_code == 302
    assert signed_in
    assert not SignInThrottle.objects.exists()
