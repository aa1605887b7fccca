"""The page's live socket: it authenticates the session, and a user hears only their own
notifications."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from portal import services
from portal.asgi import application
from tests.portal.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

# How long a socket's handshake may take: the consumer loads the session and the user from
# the database on a thread, which a busy machine (two test workers, agents, Chromium) can
# hold for more than channels' default second. Not what any test asserts.
CONNECT_SECONDS = 10


def run(scenario) -> None:
    """Run an async scenario on its own loop and thread: a browser test earlier in the
    session may have left Playwright's loop running on this one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, scenario()).result(timeout=30)


def _socket(session_key: str | None = None, path: str = "/ws/live/") -> WebsocketCommunicator:
    headers = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]
    if session_key:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session_key}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


def _session_for(user) -> str:
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def test_an_anonymous_socket_is_refused():
    async def scenario():
        socket = _socket()
        connected, code = await socket.connect(timeout=CONNECT_SECONDS)
        assert connected is False
        assert code == 4401

    run(scenario)


def test_a_socket_from_another_origin_is_refused(db):
    user = make_user("alice")
    session = _session_for(user)

    async def scenario():
        socket = WebsocketCommunicator(
            application,
            "/ws/live/",
            headers=[
                (b"origin", b"https://evil.example"),
                (b"host", b"127.0.0.1"),
                (b"cookie", f"sessionid={session}".encode()),
            ],
        )
        connected, _ = await socket.connect(timeout=CONNECT_SECONDS)
        assert connected is False

    run(scenario)


def test_each_user_hears_only_their_own_notifications():
    alice, bob = make_user("alice"), make_user("bob")
    alice_session, bob_session = _session_for(alice), _session_for(bob)

    async def scenario():
        a, b = _socket(alice_session), _socket(bob_session)
        assert (await a.connect(timeout=CONNECT_SECONDS))[0]
        assert (await b.connect(timeout=CONNECT_SECONDS))[0]
        await database_sync_to_async(services.notification_publish)(
            user=bob, title="Bob's backup failed", level="error"
        )
        message = await b.receive_from(timeout=5)
        assert "Bob&#x27;s backup failed" in message
        assert 'id="bell-count" data-count="1"' in message
        assert await a.receive_nothing(timeout=0.5)
        await database_sync_to_async(services.notification_publish)(user=alice, title="Hello Alice")
        assert "Hello Alice" in await a.receive_from(timeout=5)
        assert await b.receive_nothing(timeout=0.5)
        await a.disconnect()
        await b.disconnect()

    run(scenario)


def test_watching_a_group_the_user_may_not_see_is_ignored(monkeypatch):
    from portal import live

    calls = []

    def resolver(user, object_id):
        calls.append(object_id)
        if object_id == "mine":
            return "thing.mine"
        raise PermissionError("not yours")

    monkeypatch.setitem(live._resolvers, "thing", resolver)
    alice = make_user("alice")
    session = _session_for(alice)

    async def scenario():
        socket = _socket(session, "/ws/live/?watch=thing:mine&watch=thing:theirs&watch=nope:1")
        assert (await socket.connect(timeout=CONNECT_SECONDS))[0]
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        await layer.group_send("thing.theirs", {"type": "fragment", "html": "secret"})
        assert await socket.receive_nothing(timeout=0.3)
        await layer.group_send("thing.mine", {"type": "fragment", "html": "<p>mine</p>"})
        assert await socket.receive_from(timeout=5) == "<p>mine</p>"
        await socket.disconnect()

    run(scenario)
    assert calls == ["mine", "theirs"]
