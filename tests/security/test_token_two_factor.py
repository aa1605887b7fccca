"""Attacks with a personal access token on a subscription that requires two-factor sign-in:
a member who has not enrolled is sent to enrolment in the portal, and their token (made
before or after the requirement) must reach nothing of that subscription either, until they
enrol; their other subscriptions stay reachable, and so does everything once they enrol."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal import consumers, tokens, two_factor
from portal.models import Role
from tests.portal.test_live_socket import CONNECT_SECONDS, _session_for, _socket, run
from tests.support import builders

REFUSAL = (
    "Contoso requires two-factor sign-in: enrol at /account/two-factor/, then this token "
    "works again."
)


def _api(secret):
    return Client(HTTP_AUTHORIZATION=f"Bearer {secret}")


def _other(redundancy: str) -> str:
    return "lrs" if redundancy != "lrs" else "grs"


@pytest.fixture
def bobs_token(bob, subscription, vault):
    """bob, a Contributor of Contoso and Owner of his own Northwind, made a token; then
    alice (enrolled) required two-factor sign-in of Contoso's members."""
    builders.give_role(user=bob, subscription=subscription, role=Role.CONTRIBUTOR)
    northwind = builders.make_subscription(owner=bob, name="Northwind")
    builders.make_vault(
        resource_group=builders.make_resource_group(subscription=northwind), name="bobs-vault"
    )
    _, secret = tokens.token_create(user=bob, name="scripts", days=30)
    assert _api(secret).get(f"/api/v1/vaults/{vault.pk}/").status_code == 200
    TOTPDevice.objects.create(user=subscription.created_by, name="app", confirmed=True)
    two_factor.subscription_require_set(
        subscription=subscription, required=True, by=subscription.created_by
    )
    return secret


@pytest.mark.django_db
def test_a_token_of_a_member_who_has_not_enrolled_reaches_nothing_of_that_subscription(
    bobs_token, subscription, vault, bob
):
    api = _api(bobs_token)
    before = vault.redundancy
    for response in (
        api.get(f"/api/v1/vaults/{vault.pk}/"),
        api.get(f"/api/v1/subscriptions/{subscription.pk}/"),
        api.put(
            f"/api/v1/vaults/{vault.pk}/redundancy/",
            {"redundancy": _other(before)},
            content_type="application/json",
        ),
        api.post(
            "/api/v1/resource-groups/",
            {"subscription": str(subscription.pk), "name": "more-rg", "location": "West Europe"},
            content_type="application/json",
        ),
    ):
        assert response.status_code == 403
        assert response.json() == {"detail": REFUSAL}
    vault.refresh_from_db()
    assert vault.redundancy == before
    assert not subscription.resource_groups.filter(name="more-rg").exists()
    # Lists leave Contoso out (its vault, its activity); bob's own Northwind is unaffected.
    names = [v["name"] for v in api.get("/api/v1/vaults/").json()["results"]]
    assert names == ["bobs-vault"]
    subs = [x["name"] for x in api.get("/api/v1/subscriptions/").json()["results"]]
    assert subs == ["Northwind"]
    assert (
        api.get("/api/v1/activity/", {"subscription": str(subscription.pk)}).json()["results"] == []
    )
    # A token made after the requirement is no different.
    _, later = tokens.token_create(user=bob, name="later", days=7)
    assert _api(later).get(f"/api/v1/vaults/{vault.pk}/").status_code == 403


@pytest.mark.django_db
def test_once_the_member_enrols_the_same_token_works_again(bobs_token, vault, bob):
    TOTPDevice.objects.create(user=bob, name="app", confirmed=True)
    assert _api(bobs_token).get(f"/api/v1/vaults/{vault.pk}/").status_code == 200


@pytest.mark.django_db
def test_an_outsiders_token_still_gets_404_not_the_requirement(bobs_token, vault, charlie):
    _, secret = tokens.token_create(user=charlie, name="mine", days=7)
    response = _api(secret).get(f"/api/v1/vaults/{vault.pk}/")
    assert response.status_code == 404
    assert "Contoso" not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_socket_open_before_the_requirement_closes_when_it_is_turned_on(alice, bob):
    """bob's page was open (no second factor) when alice required two-factor sign-in."""
    subscription = builders.make_subscription(owner=alice, members={bob: Role.READER})
    TOTPDevice.objects.create(user=alice, name="app", confirmed=True)
    session = _session_for(bob)

    async def scenario():
        socket = _socket(session, "/ws/live/")
        assert (await socket.connect(timeout=CONNECT_SECONDS))[0]
        await database_sync_to_async(two_factor.subscription_require_set)(
            subscription=subscription, required=True, by=alice
        )
        output = await socket.receive_output(timeout=5)
        assert output["type"] == "websocket.close"
        assert output.get("code") == consumers.CLOSE_FORBIDDEN
        connected, code = await _socket(session, "/ws/live/").connect(timeout=CONNECT_SECONDS)
        assert (connected, code) == (False, consumers.CLOSE_FORBIDDEN)

    run(scenario)
    assert reverse("portal:two-factor") == "/account/two-factor/"


@pytest.mark.django_db
def test_a_barred_token_cannot_acknowledge_or_close_that_subscriptions_alerts(bobs_token, vault):
    from jobs import services
    from jobs.models import Alert

    alert = services.alert_raise(
        vault=vault,
        machine=None,
        kind=Alert.Kind.BACKUP_FAILED,
        severity=Alert.Severity.CRITICAL,
        message="Backup failed: disk full",
    )
    api = _api(bobs_token)
    for action in ("acknowledge", "close"):
        response = api.post(f"/api/v1/alerts/{alert.pk}/{action}/")
        assert response.status_code == 403
        assert response.json() == {"detail": REFUSAL}
    alert.refresh_from_db()
    assert alert.acknowledged_at is None and alert.resolved_at is None
