"""Live pushes at fleet rate: a watcher hears every push of its groups, in order."""

from __future__ import annotations

import asyncio
import os

import pytest

from portal import live, realtime
from tests.portal.conftest import make_user
from tests.portal.test_live_socket import CONNECT_SECONDS, _session_for, _socket, run

pytestmark = pytest.mark.django_db(transaction=True)

PUSHES = 400


def test_a_watcher_hears_every_push_of_200_live_jobs_in_order(monkeypatch):
    monkeypatch.setitem(live._resolvers, "thing", lambda user, object_id: f"thing.{object_id}")
    monkeypatch.setattr(realtime, "serving_pid", os.getpid())  # this process has the sockets
    session = _session_for(make_user("alice"))

    async def scenario():
        socket = _socket(session, "/ws/live/?watch=thing:vault")
        assert (await socket.connect(timeout=CONNECT_SECONDS))[0]
        loop = asyncio.get_running_loop()

        def agents_report():  # as the progress endpoint does, from request threads
            for n in range(PUSHES):
                realtime.publish_now("thing.vault", f'{{"n": {n}}}')
            assert realtime.flush(timeout=20)

        sending = loop.run_in_executor(None, agents_report)
        heard = [await socket.receive_from(timeout=20) for _ in range(PUSHES)]
        await sending
        assert heard == [f'{{"n": {n}}}' for n in range(PUSHES)]
        await socket.disconnect()

    run(scenario)
