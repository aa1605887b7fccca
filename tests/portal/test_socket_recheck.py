"""A live socket checks its user's access again before passing a watched group's push on
(``portal.consumers``): the answer is asked again in the background once it is
``REFRESH_AFTER_SECONDS`` old, so a slow question holds no push while the socket's answer is
within ``RECHECK_SECONDS``."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async

from portal import consumers, live, realtime
from portal.models import Membership, Role
from tests.portal.test_live_socket import CONNECT_SECONDS, _session_for, _socket, run
from tests.support import builders
from vaults.services import group_for_vault

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_slow_access_question_holds_no_push_while_the_answer_is_within_the_bound(
    bob, subscription, monkeypatch
):
    Membership.objects.create(user=bob, subscription=subscription, role=Role.READER)
    vault = builders.make_vault(
        resource_group=builders.make_resource_group(subscription=subscription)
    )
    session = _session_for(bob)
    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 1.5)
    monkeypatch.setattr(consumers, "REFRESH_AFTER_SECONDS", 0.3)
    asked = []

    def slow(user_id, watches):  # a busy process: each question takes 0.6 s
        asked.append(time.monotonic())
        time.sleep(0.6)
        return live.still_allowed(user_id, watches)

    monkeypatch.setattr(consumers, "_still_allowed", consumers.db_in_executor(slow))
    consumers.forget_answers()

    async def scenario():
        socket = _socket(session, f"/ws/live/?watch=vault:{vault.pk}")
        assert (await socket.connect(timeout=CONNECT_SECONDS))[0]
        waits = []
        for n in range(25):  # 2.5 s: past RECHECK_SECONDS more than once
            sent = time.monotonic()
            await database_sync_to_async(realtime.publish_now)(
                group_for_vault(vault.pk), f"<p>{n}</p>"
            )
            assert await socket.receive_from(timeout=5) == f"<p>{n}</p>"
            waits.append(time.monotonic() - sent)
            await asyncio.sleep(0.1)
        await socket.disconnect()
        return waits

    waits = run_returning(scenario)
    assert len(asked) >= 2  # asked again while pushes went on
    assert max(waits) < 0.5  # none waited for a 0.6 s question


def run_returning(scenario):
    result = []

    async def keep():
        result.append(await scenario())

    run(keep)
    return result[0]
