"""Redis lost a machine's ACL user (restarted without an ACL file, or the user deleted):
the machine's worker is disconnected and cannot log in again. The portal's periodic
``broker_users_sync`` recreates the user from the stored password hash, the same worker
logs in again by itself, and runs the task the portal queued meanwhile and the next one.

Only this test's machine's user is deleted (ACL DELUSER) on the shared Redis; the server
itself and everyone else's users stay."""

from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings
from django.db import transaction

from agents import broker, dispatch
from agents.runtime import protocol
from tests.agents import conftest as agents
from tests.agents import test_worker as live
from tests.agents.conftest import register_directly, write_registration

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
agent_env = agents.agent_env
redis_broker = agents.redis_broker


def ping(machine, note: str) -> str:
    with transaction.atomic():
        task_id = dispatch.send_after_commit(machine, protocol.PING_TASK, note=note)
    assert task_id
    return task_id


def test_a_redis_that_lost_the_machines_broker_user_gets_it_back_and_the_agent_runs_again(
    redis_broker, vault, alice, agent_env, tmp_path
):
    if not str(settings.CELERY_BROKER_URL).startswith("redis"):
        # The portal sends through its own broker: Redis only in the servers pass (the
        # embedded defaults use the filesystem transport, which the agent here does not read).
        pytest.skip("the portal's broker is Redis in the servers pass")
    machine, registration = register_directly(vault, alice, "web-01")
    write_registration(registration, agent_env)
    admin = redis.Redis.from_url(redis_broker, decode_responses=True)
    worker = live.Worker(agent_env, tmp_path / "worker.log")
    try:
        worker.start()
        first = ping(machine, "before")
        assert live.result_of(redis_broker, registration, first)["status"] == "SUCCESS"

        assert admin.acl_deluser(machine.broker_username) == 1  # Redis "forgot" it
        time.sleep(1.0)  # the worker notices and fails to log in again
        meanwhile = ping(machine, "queued while the user was gone")
        assert machine.broker_username not in admin.acl_users()

        assert broker.broker_users_sync() == 1  # beat runs it every 2 minutes

        assert machine.broker_username in admin.acl_users()
        result = live.result_of(redis_broker, registration, meanwhile, timeout=90)
        assert result["status"] == "SUCCESS"
        after = ping(machine, "after")
        assert live.result_of(redis_broker, registration, after, timeout=30)["status"] == (
            "SUCCESS"
        )
        assert broker.broker_users_sync() == 0  # nothing more to restore
    finally:
        worker.stop()
        admin.close()
