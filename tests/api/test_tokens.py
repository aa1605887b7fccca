"""Personal access tokens and the two ways to authenticate, tried as an attacker would: a
revoked, expired or guessed token, another user's token, a deactivated owner, a session
without its CSRF token, too many requests."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from portal import services, tokens
from portal.models import PersonalAccessToken
from tests.api.conftest import ApiClient
from tests.support import builders

pytestmark = pytest.mark.django_db


def test_a_token_is_stored_only_as_its_digest_and_acts_as_its_owner(alice, vault):
    row, token = tokens.token_create(user=alice, name="backup-scripts", days=7)
    stored = PersonalAccessToken.objects.get(pk=row.pk)
    assert stored.digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in {stored.digest, stored.prefix, stored.name}
    assert token.startswith(stored.prefix)
    answer = ApiClient(token).get("/api/v1/vaults/")
    assert [v["name"] for v in answer.json()["results"]] == ["vault-one"]
    assert ApiClient(token).get("/api/v1/me/").json()["authenticated_by"] == "token"
    stored.refresh_from_db()
    assert stored.last_used_at is not None


def test_it_refuses_bad_names_and_lifetimes_by_field(alice):
    tokens.token_create(user=alice, name="ci", days=30)
    with pytest.raises(Exception) as refused:
        tokens.token_create(user=alice, name="CI", days=400)
    assert set(refused.value.message_dict) == {"name", "days"}


@pytest.mark.parametrize("how", ["revoked", "expired", "deactivated", "one-time password"])
def test_a_dead_token_gets_401_saying_why(how, alice, vault):
    row, token = tokens.token_create(user=alice, name="old", days=30)
    if how == "revoked":
        tokens.token_revoke(user=alice, token_id=row.pk)
    elif how == "expired":
        PersonalAccessToken.objects.filter(pk=row.pk).update(
            expires_at=timezone.now() - timedelta(seconds=1)
        )
    elif how == "deactivated":
        alice.is_active = False  # (services refuse to deactivate a last Owner)
        alice.save(update_fields=["is_active"])
    else:
        services.user_password_reset(user=alice)
    answer = ApiClient(token).get(f"/api/v1/vaults/{vault.pk}/")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "vault-one" not in answer.content.decode()


def test_another_users_token_sees_only_that_users_things(alice, charlie, vault, api):
    outsider = api(charlie)
    assert outsider.get(f"/api/v1/vaults/{vault.pk}/").status_code == 404
    assert outsider.get("/api/v1/vaults/").json()["count"] == 0


def test_nobody_revokes_someone_elses_token(alice, charlie):
    row, token = tokens.token_create(user=alice, name="mine", days=30)
    browser = Client()
    browser.force_login(charlie)
    assert browser.post(f"/account/tokens/{row.pk}/revoke/").status_code == 404
    assert ApiClient(token).get("/api/v1/me/").status_code == 200


def test_guessing_tokens_pauses_the_address(alice, settings):
    settings.HAVEN_SIGNIN_FAILURE_LIMIT = 3
    _, good = tokens.token_create(user=alice, name="real", days=30)
    guesser = ApiClient("hvn_" + "x" * 43)
    assert [guesser.get("/api/v1/me/").status_code for _ in range(3)] == [401, 401, 401]
    paused = guesser.get("/api/v1/me/")
    assert paused.status_code == 429
    assert int(paused.headers["Retry-After"]) >= 1
    # While paused, even the right token from that address is not looked at.
    assert ApiClient(good).get("/api/v1/me/").status_code == 429


def test_each_user_is_held_to_the_rate_limit(alice, settings, api):
    cache.clear()
    settings.HAVEN_API_RATE_PER_MINUTE = 2
    client = api(alice)
    assert [client.get("/api/v1/me/").status_code for _ in range(3)] == [200, 200, 429]


def test_the_browser_session_works_and_writes_need_the_csrf_token(alice, subscription):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    session = ApiClient(client=browser)
    assert session.get("/api/v1/me/").json()["authenticated_by"] == "session"
    body = {"subscription": str(subscription.pk), "name": "rg-csrf", "location": "West Europe"}
    assert session.post("/api/v1/resource-groups/", body).status_code == 403
    browser.get("/account/tokens/")  # any page sets the CSRF cookie
    csrf = browser.cookies["csrftoken"].value
    assert session.post("/api/v1/resource-groups/", body, HTTP_X_CSRFTOKEN=csrf).status_code == 201


def test_the_account_page_shows_a_new_token_once(alice):
    browser = Client()
    browser.force_login(alice)
    created = browser.post("/account/tokens/", {"name": "laptop", "days": "7"})
    assert created.status_code == 200
    assert created["Cache-Control"] == "no-store"
    secret = created.context["secret"]
    assert secret.startswith("hvn_") and secret in created.content.decode()
    again = browser.get("/account/tokens/").content.decode()
    assert "laptop" in again and secret not in again
    refused = browser.post("/account/tokens/", {"name": "", "days": "7"})
    assert refused.status_code == 400


def test_a_user_who_must_change_the_password_gets_no_session_api(alice):
    user = builders.make_user(username="newbie")
    user.password_change_required = True
    user.save()
    browser = Client()
    browser.force_login(user)
    assert browser.get("/api/v1/me/").status_code == 403


def test_with_the_cache_server_gone_the_api_still_answers(alice, world, api, settings):
    """Redis away: the rate limit counts in the process, a job's live progress comes from
    the database; no 500."""
    client = api(alice)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",  # nothing listens on the discard port
        }
    }
    assert client.get("/api/v1/me/").status_code == 200
    detail = client.get(f"/api/v1/jobs/{world.job.pk}/")
    assert (detail.status_code, detail.json()["status"]) == (200, "queued")
    assert client.post(f"/api/v1/machines/{world.machine.pk}/backup/", {}).status_code == 202
