"""Someone guessing a password (or codes, or access tokens) is paused by the sign-in throttle;
each pause is one *Sign-in paused after failures* entry that the account's Owners find in the
subscription's activity log, naming the user name tried and the address. The guesser sees
the same words whether or not the account exists."""

from __future__ import annotations

import re
import time

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from portal.models import Role
from tests.support import builders
from tests.support.activity import clear_of_a_window_edge
from vaults.activity import Operation
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db

GUESSER = "203.0.113.5"


@pytest.fixture(autouse=True)
def _clear_of_a_window_edge():
    clear_of_a_window_edge(seconds=30)


def _guess(username: str, *, address: str = GUESSER, password: str = "guess"):
    return Client().post(
        reverse("portal:login"),
        {"username": username, "password": password},
        REMOTE_ADDR=address,
    )


def _pauses():
    return ActivityEntry.objects.filter(operation=Operation.SIGNIN_LOCKOUT)


def test_a_pause_is_one_entry_in_each_subscription_of_the_account(alice, subscription, bob):
    builders.make_subscription(owner=alice, name="Northwind", members={bob: Role.READER})
    limit = settings.HAVEN_SIGNIN_FAILURE_LIMIT
    answers = [_guess("alice").status_code for _ in range(limit + 10)]
    # The limit-th failure starts the pause; the tries during it are not even checked.
    assert answers[: limit - 1] == [200] * (limit - 1) and 429 in answers
    assert sorted(_pauses().values_list("subscription__name", flat=True)) == [
        "Contoso",
        "Northwind",
    ]
    entry = _pauses().get(subscription=subscription)
    assert (entry.outcome, entry.username, entry.address) == ("refused", "anonymous", GUESSER)
    assert (entry.resource_kind, entry.resource_name) == ("user account", "alice")
    assert entry.reason == f"Sign-in paused for 1 second after {limit} failures in a row."
    assert entry.detail == {"user_name_tried": "alice"}

    # The Owner finds it in the subscription's log.
    owner = Client()
    owner.force_login(alice)
    page = owner.get(reverse("vaults:subscription-activity", args=[subscription.pk]))
    text = page.content.decode()
    assert "Sign-in paused after failures" in text and GUESSER in text and "alice" in text

    # Once the pause is over, the next failure starts the next (longer) pause: one more each.
    time.sleep(1.1)
    _guess("alice")
    assert _pauses().filter(subscription=subscription).count() == 2
    assert _pauses().filter(subscription=subscription, reason__contains="2 seconds").exists()
    # The owner, from elsewhere, is neither paused nor logged.
    assert _guess("alice", address="198.51.100.7", password=builders.PASSWORD).status_code == 302
    assert _pauses().count() == 4


def _words(response) -> str:
    text = re.sub(r"[A-Za-z0-9]{64}", "CSRF", response.content.decode())  # each page's own
    return re.sub(r"(alice|nobody)", "NAME", text)


def test_the_guesser_sees_the_same_whether_or_not_the_account_exists(alice, subscription):
    limit = settings.HAVEN_SIGNIN_FAILURE_LIMIT
    real = [_guess("alice") for _ in range(limit + 2)]
    made_up = [_guess("nobody", address="203.0.113.6") for _ in range(limit + 2)]
    assert [r.status_code for r in real] == [r.status_code for r in made_up]
    assert [r.get("Retry-After") for r in real] == [r.get("Retry-After") for r in made_up]
    assert [_words(r) for r in real] == [_words(r) for r in made_up]
    # Both pauses are recorded; the made-up name's belongs to no subscription.
    nobody = _pauses().get(detail={"user_name_tried": "nobody"})
    assert (nobody.subscription_id, nobody.address, nobody.resource_id) == (
        None,
        "203.0.113.6",
        "",
    )
    assert _pauses().get(resource_name="alice").subscription_id == subscription.pk


def test_a_guesser_cycling_made_up_names_adds_to_one_entry(db):
    limit = settings.HAVEN_SIGNIN_FAILURE_LIMIT
    for n in range(6):
        for _ in range(limit):
            _guess(f"made-up-{n}")
    [entry] = _pauses()
    assert (entry.repeat_count, entry.subscription_id, entry.detail) == (
        6,
        None,
        {"user_name_tried": "made-up-0"},
    )


def test_guessing_access_tokens_records_the_addresss_pause(db):
    limit = settings.HAVEN_SIGNIN_FAILURE_LIMIT
    client = Client(HTTP_AUTHORIZATION="Bearer hvn_guess", REMOTE_ADDR=GUESSER)
    answers = [client.get("/api/v1/me/").status_code for _ in range(limit + 3)]
    assert answers[:limit] == [401] * limit and answers[-1] == 429
    entry = _pauses().get()
    assert (entry.detail, entry.address, entry.subscription_id) == (
        {"user_name_tried": "api token"},
        GUESSER,
        None,
    )


def test_a_guesser_from_two_addresses_is_an_entry_for_each_address(db):
    # Pauses alike (same name, length, failures) are one counted entry only from one
    # address: the address an entry shows is every one of its tries'.
    limit = settings.HAVEN_SIGNIN_FAILURE_LIMIT
    for n, address in enumerate((GUESSER, "203.0.113.6", GUESSER)):
        for _ in range(limit):
            _guess(f"made-up-{n}", address=address)
    entries = {e.address: e.repeat_count for e in _pauses()}
    assert entries == {GUESSER: 2, "203.0.113.6": 1}


def test_the_administrator_sees_every_pause_on_sign_in_activity(alice, subscription):
    limit = settings.HAVEN_SIGNIN_FAILURE_LIMIT
    for _ in range(limit):
        _guess("nobody-here")
    tokens = Client(HTTP_AUTHORIZATION="Bearer hvn_guess", REMOTE_ADDR="203.0.113.9")
    for _ in range(limit):
        tokens.get("/api/v1/me/")
    for _ in range(limit):
        _guess("alice", address="203.0.113.7")
    url = reverse("portal:signin-activity")

    admin = Client()
    admin.force_login(builders.make_user(username="root", is_superuser=True, is_staff=True))
    page = admin.get(url)
    assert page.status_code == 200
    rows = re.findall(r"<tr>(.*?)</tr>", page.content.decode().split("<tbody>")[1], re.S)
    assert len(rows) == 3
    text = " ".join(re.sub(r"<[^>]+>", " ", row) for row in rows)
    # The name with no account and the guessed tokens, which no subscription's log shows.
    assert "nobody-here" in text and GUESSER in text
    assert "Access tokens (API)" in text and "203.0.113.9" in text
    assert "alice" in text and "203.0.113.7" in text and "Contoso" in text
    assert f"Sign-in paused for 1 second after {limit} failures in a row." in text
    # The administrator finds it from the Users page and the left navigation.
    assert url in admin.get(reverse("portal:users")).content.decode()

    # Nobody else knows it is there: the subscription's Owner, a member, anyone signed in.
    owner = Client()
    owner.force_login(alice)
    assert owner.get(url).status_code == 404
    assert url not in owner.get(reverse("portal:users")).content.decode()
    assert Client().get(url).status_code == 302  # to the sign-in page
    # Read only.
    assert admin.post(url).status_code == 405
