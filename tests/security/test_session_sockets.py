"""Attacks on the live socket: keep hearing a vault's pushes after losing the role on it,
after being deactivated, after signing out; open one with a one-time password."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.urls import reverse

from portal import consumers, realtime, services
from portal.models import Membership, Role
from tests.portal.test_live_socket import CONNECT_SECONDS, _session_for, _socket, run
from tests.support import builders
from vaults.services import group_for_vault

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def watched(alice, bob, subscription):
    """bob, a Reader on Contoso, and the socket path of a page watching its vault."""
    Membership.objects.create(user=bob, subscription=subscription, role=Role.READER)
    vault = builders.make_vault(
        resource_group=builders.make_resource_group(subscription=subscription)
    )
    return vault, f"/ws/live/?watch=vault:{vault.pk}"


async def _push(vault, html: str) -> None:
    await database_sync_to_async(realtime.publish_now)(group_for_vault(vault.pk), html)


async def _closed(socket) -> bool:
    output = await socket.receive_output(timeout=5)
    return output["type"] == "websocket.close" and output.get("code") == consumers.CLOSE_FORBIDDEN


def test_a_member_whose_role_is_removed_hears_the_vault_no_more(bob, watched):
    vault, path = watched
    session = _session_for(bob)

    async def scenario():
        socket = _socket(session, path)
        assert (await socket.connect(timeout=CONNECT_SECONDS))[0]
        await _push(vault, "<p>before</p>")
        assert await socket.receive_from(timeout=5) == "<p>before</p>"
        membership = await database_sync_to_async(Membership.objects.get)(user=bob)
        await database_sync_to_async(services.membership_remove)(membership=membership)
        await _push(vault, "<p>backup of the payroll server finished</p>")
        assert await socket.receive_nothing(timeout=0.5)
        await socket.disconnect()

    run(scenario)


def test_a_removed_role_is_noticed_even_without_word_from_the_portal(bob, watched, monkeypatch):
    """A change the signals miss (another tool edited the database): the check before a
    push still catches it."""
    vault, path = watched
    session = _session_for(bob)
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0)

    async def scenario():
        socket = _socket(session, path)
        assert (await socket.connect(timeout=CONNECT_SECONDS))[0]
        await database_sync_to_async(
            lambda: Membership.objects.filter(user=bob).update(role="nobody")
        )()
        await _push(vault, "<p>secret</p>")
        assert await socket.receive_nothing(timeout=0.5)
        await socket.disconnect()

    run(scenario)


def test_a_deactivated_user_is_disconnected(alice, bob, watched):
    vault, path = watched
    session = _session_for(bob)

    async def scenario():
        socket = _socket(session, path)
        assert (await socket.connect(timeout=CONNECT_SECONDS))[0]
        await database_sync_to_async(services.user_set_active)(user=bob, active=False)
        assert await _closed(socket)
        await _push(vault, "<p>secret</p>")
        assert await socket.receive_nothing(timeout=0.3)

    run(scenario)


def test_signing_out_closes_that_sessions_sockets_only(bob, watched):
    vault, path = watched
    signing_out, elsewhere = Client(), Client()
    for client in (signing_out, elsewhere):
        client.force_login(bob, backend="django.contrib.auth.backends.ModelBackend")

    async def scenario():
        from django.conf import settings

        name = settings.SESSION_COOKIE_NAME
        here = _socket(signing_out.cookies[name].value, path)
        there = _socket(elsewhere.cookies[name].value, path)
        assert (await here.connect(timeout=CONNECT_SECONDS))[0]
        assert (await there.connect(timeout=CONNECT_SECONDS))[0]
        response = await database_sync_to_async(signing_out.post)(reverse("portal:logout"))
        assert response.status_code == 302
        assert await _closed(here)
        await _push(vault, "<p>still here</p>")
        assert await there.receive_from(timeout=5) == "<p>still here</p>"
        await there.disconnect()

    run(scenario)


def test_a_socket_with_a_one_time_password_is_refused(bob, watched):
    _, path = watched
    bob.password_change_required = True
    bob.save()
    session = _session_for(bob)

    async def scenario():
        connected, code = await _socket(session, path).connect(timeout=CONNECT_SECONDS)
        assert connected is False
        assert code == consumers.CLOSE_FORBIDDEN

    run(scenario)


def test_the_backup_centers_group_is_for_members_only_and_only_while_they_are(
    bob, charlie, watched
):
    """``?watch=fleet:<subscription>`` (the Backup center): an outsider's socket hears none
    of the subscription's changes, and a member whose role is removed hears them no more."""
    vault, _ = watched
    path = f"/ws/live/?watch=fleet:{vault.subscription_id}"
    group = realtime.group_for_fleet(vault.subscription_id)

    async def push(html: str) -> None:
        await database_sync_to_async(realtime.publish_now)(group, html)

    async def scenario():
        member, outsider = _socket(_session_for(bob), path), _socket(_session_for(charlie), path)
        assert (await member.connect(timeout=CONNECT_SECONDS))[0] and (
            await outsider.connect(timeout=CONNECT_SECONDS)
        )[0]
        await push("<p>before</p>")
        assert await member.receive_from(timeout=5) == "<p>before</p>"
        assert await outsider.receive_nothing(timeout=0.5)
        membership = await database_sync_to_async(Membership.objects.get)(user=bob)
        await database_sync_to_async(services.membership_remove)(membership=membership)
        await push("<p>payroll-01 went offline</p>")
        assert await member.receive_nothing(timeout=0.5)
        assert await outsider.receive_nothing(timeout=0.5)
        await member.disconnect()
        await outsider.disconnect()

    run(scenario)


def test_a_machines_policy_group_is_for_those_who_can_read_the_machine(bob, charlie, watched):
    """``?watch=policy:<machine>`` (the policy and throttling pages): an outsider's socket
    hears nothing of whether the machine's agent applied its policy."""
    vault, _ = watched
    machine = builders.make_machine(vault=vault, name="payroll-01")
    path = f"/ws/live/?watch=policy:{machine.pk}"

    async def scenario():
        member, outsider = _socket(_session_for(bob), path), _socket(_session_for(charlie), path)
        assert (await member.connect(timeout=CONNECT_SECONDS))[0]
        assert (await outsider.connect(timeout=CONNECT_SECONDS))[0]
        await database_sync_to_async(realtime.publish_now)(f"policy.{machine.pk}", "<p>v2</p>")
        assert await member.receive_from(timeout=5) == "<p>v2</p>"
        assert await outsider.receive_nothing(timeout=0.5)
        await member.disconnect()
        await outsider.disconnect()

    run(scenario)
