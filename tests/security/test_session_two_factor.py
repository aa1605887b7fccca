"""Attacks with a stolen password on an account that has two-factor sign-in: the session
that passed the password alone must reach nothing (pages, downloads, fragments, the API,
the live socket, the two-factor page itself), and a one-time password set by an Owner does
not skip the code."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal import consumers, services, tokens, two_factor
from portal.models import Membership, Role
from tests.portal.test_live_socket import CONNECT_SECONDS, _socket, run
from tests.support import builders
from tests.support.totp import code_for

CODE_PAGE = reverse("portal:signin-code")


@pytest.fixture
def stolen(alice, subscription, resource_group):
    """alice has an authenticator app; the attacker has her password and signed in with it."""
    TOTPDevice.objects.create(user=alice, name="app", confirmed=True)
    two_factor.recovery_codes_regenerate(user=alice)
    client = Client()
    response = client.post(
        reverse("portal:login"), {"username": "alice", "password": builders.PASSWORD}
    )
    assert response["Location"] == CODE_PAGE
    return client


@pytest.mark.django_db
def test_a_password_only_session_opens_no_page_download_or_fragment(alice, stolen, vault):
    for response in [
        stolen.get(reverse("portal:home")),
        stolen.get(reverse("vaults:list")),
        stolen.get(reverse("vaults:overview", args=[vault.pk])),
        stolen.get(reverse("vaults:credentials", args=[vault.pk])),
        stolen.get(reverse("agents:installer")),
        stolen.get(reverse("portal:tokens")),
        stolen.post(reverse("portal:tokens"), {"name": "mine", "days": "30"}),
        stolen.post(reverse("vaults:credentials-download", args=[vault.pk]), {"agent_ready": "on"}),
        stolen.get(reverse("portal:password-change")),
    ]:
        assert response.status_code == 302
        assert response["Location"] == CODE_PAGE
        assert "Content-Disposition" not in response
    assert not vault.credentials.exists()
    assert not tokens.tokens_of(alice).exists()
    fragment = stolen.get(reverse("portal:search"), {"q": "Contoso"}, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 403
    assert fragment["HX-Redirect"] == CODE_PAGE
    assert "Contoso" not in fragment.content.decode()


@pytest.mark.django_db
def test_a_password_only_session_cannot_turn_two_factor_off_or_see_new_codes(alice, stolen):
    page = reverse("portal:two-factor")
    for data in (
        {"action": "disable", "password": builders.PASSWORD},
        {"action": "regenerate"},
    ):
        response = stolen.post(page, data)
        assert response["Location"] == CODE_PAGE
    assert two_factor.is_enrolled(alice)
    assert two_factor.recovery_codes_left(alice) == 10


@pytest.mark.django_db
def test_the_api_refuses_a_password_only_session_and_tokens_are_not_sessions(alice, stolen):
    refused = stolen.get("/api/v1/me/")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "Enter your two-factor sign-in code in the portal first."}
    # A token was created in a verified session; it authenticates on its own (docs/security.md).
    _, secret = tokens.token_create(user=alice, name="scripts", days=30)
    assert Client().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == 200


@pytest.mark.django_db
def test_an_owners_password_reset_does_not_skip_the_code(alice, subscription):
    """The one-time password someone saw over the Owner's shoulder still needs alice's phone."""
    device = TOTPDevice.objects.create(user=alice, name="app", confirmed=True)
    bob = builders.make_user(username="bob")
    Membership.objects.create(user=bob, subscription=subscription, role=Role.OWNER)
    password = services.user_password_reset(user=alice)
    client = Client()
    client.post(reverse("portal:login"), {"username": "alice", "password": password})
    assert client.get(reverse("portal:password-change"))["Location"] == CODE_PAGE
    after = client.post(CODE_PAGE, {"code": code_for(device)})
    assert after["Location"] == reverse("portal:password-change")


@pytest.mark.django_db
def test_hostile_codes_are_refused_with_a_400(stolen):
    for code in ("²²²²²²", "1" * 5000, "' OR 1=1 --", "<script>", "\u0663" * 6):
        response = stolen.post(CODE_PAGE, {"code": code, "next": "²"})
        assert response.status_code in (400, 429)


@pytest.mark.django_db(transaction=True)
def test_a_session_that_gave_no_code_has_no_live_socket_until_it_does(alice, subscription):
    """A session opened with the password before alice set up her app loses its open socket
    when she does, may not open another, and gets one once it gives a code. (One test: each
    transactional test costs a database flush.)"""
    other = Client()
    other.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    own = Client()
    own.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    page = reverse("portal:two-factor")

    def enrol():
        own.post(page, {"action": "start"})
        device = two_factor.enrolment_pending(alice)
        assert own.post(page, {"action": "confirm", "code": code_for(device)}).status_code == 200

    def give_code():
        device = TOTPDevice.objects.get(user=alice)
        response = other.post(CODE_PAGE, {"code": code_for(device, steps_ahead=1)})
        assert response.status_code == 302
        return other.cookies[settings.SESSION_COOKIE_NAME].value  # the key was cycled

    async def scenario():
        pending = other.cookies[settings.SESSION_COOKIE_NAME].value
        socket = _socket(pending, "/ws/live/")
        assert (await socket.connect(timeout=CONNECT_SECONDS))[0]
        await database_sync_to_async(enrol)()
        output = await socket.receive_output(timeout=5)
        assert output["type"] == "websocket.close"
        assert output.get("code") == consumers.CLOSE_FORBIDDEN
        connected, code = await _socket(pending, "/ws/live/").connect(timeout=CONNECT_SECONDS)
        assert (connected, code) == (False, consumers.CLOSE_FORBIDDEN)
        verified = await database_sync_to_async(give_code)()
        again = _socket(verified, "/ws/live/")
        assert (await again.connect(timeout=CONNECT_SECONDS))[0]
        await again.disconnect()

    run(scenario)
