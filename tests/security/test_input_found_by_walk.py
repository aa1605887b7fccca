"""Bad input the URL walk (test_url_walk.py) found answering 500, one test each."""

from __future__ import annotations

import pytest

from portal import realtime
from tests.support import builders

pytestmark = pytest.mark.django_db


@pytest.fixture
def machine(vault):
    return builders.make_machine(vault=vault, name="web-01")


@pytest.mark.parametrize(
    "url",
    [
        "/vaults/?q=a%00b",
        "/vaults/create/check-name/?name=a%00b",
        "/machines/%00/",
        "/storage/a%00b/",
    ],
)
def test_a_nul_character_in_a_url_is_a_400(client, alice, vault, url):
    """PostgreSQL refuses NUL in any text it compares: every lookup was a 500 there."""
    client.force_login(alice)
    answer = client.get(url)
    assert answer.status_code == 400
    assert "NUL character" in answer.content.decode()


def test_a_nul_character_in_a_restore_form_is_a_400_and_starts_nothing(client, alice, machine):
    from jobs.models import Job

    client.force_login(alice)
    answer = client.post(
        f"/recover/{machine.pk}/to/{machine.pk}/restore/", {"rp": "a\x00b", "paths": ["/srv"]}
    )
    assert answer.status_code == 400
    assert not Job.objects.exists()


def test_a_signed_relay_message_that_is_not_one_is_a_400(client):
    """The relay trusts the portal's signature; a signed body that is not a message (a bug
    in a sender) is refused, not a 500."""
    for body in (b"not json", b"[]", b'{"group": 1, "html": "x"}', b'{"html": "x"}'):
        answer = client.post(
            "/_internal/realtime/",
            body,
            content_type="application/json",
            headers={"X-Haven-Signature": realtime.relay_signature(body)},
        )
        assert answer.status_code == 400, body


def test_an_unsigned_relay_message_is_a_403(client):
    answer = client.post(
        "/_internal/realtime/",
        b'{"group": "g", "html": "x"}',
        content_type="application/json",
        headers={"X-Haven-Signature": "0" * 64},
    )
    assert answer.status_code == 403


def test_a_form_posted_where_a_raw_body_is_read_is_refused_not_a_500(client, monkeypatch):
    """The NUL check parses forms before the view; views that read the raw body (the relay,
    the agent API) must still be able to."""
    monkeypatch.setattr("agents.api_views.REGISTER_LIMIT_PER_MINUTE", 10**9)
    assert client.post("/_internal/realtime/", {"group": "g"}).status_code == 403
    answer = client.post("/api/agent/register/", {"credentials": "x"})
    assert answer.status_code == 400 and answer.json()["error"] == "malformed"
