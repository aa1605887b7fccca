"""A machine's broker user cannot stall Redis: no Lua (a script runs to its end while Redis
answers BUSY to the whole portal), nothing outside its own keys; and a real agent worker
still receives, acknowledges and (after a crash) restores its tasks without Lua."""

from __future__ import annotations

import json

import pytest
import redis

from tests.agents import conftest as agents
from tests.agents import test_worker as live
from tests.agents.conftest import register_directly, write_registration

pytestmark = [pytest.mark.django_db(transaction=True)]
# The agents' fixtures: the agent's config in a temporary folder, per-machine Redis users.
agent_env = agents.agent_env
redis_broker = agents.redis_broker

LOOP = "local i = 0 while true do i = i + 1 end"


@pytest.fixture
def two_machines(redis_broker, vault, alice, agent_env):
    machine_a, reg_a = register_directly(vault, alice, "agent-a")
    _, reg_b = register_directly(vault, alice, "agent-b")
    write_registration(reg_a, agent_env)
    return (machine_a, reg_a), reg_b


def as_machine(registration) -> redis.Redis:
    return redis.Redis.from_url(registration.broker_url, socket_timeout=5)


@pytest.mark.parametrize(
    "command",
    [
        ("EVAL", LOOP, 0),
        ("EVAL_RO", "return 1", 0),
        ("EVALSHA", "a" * 40, 0),
        ("EVALSHA_RO", "a" * 40, 0),
        ("SCRIPT", "LOAD", LOOP),
        ("SCRIPT", "FLUSH"),
        ("SCRIPT", "KILL"),
        ("FUNCTION", "LOAD", "#!lua name=stall\nredis.register_function('f', function() end)"),
        ("FUNCTION", "FLUSH"),
        ("FCALL", "f", 0),
        ("FCALL_RO", "f", 0),
    ],
    ids=lambda c: " ".join(str(p) for p in c[:2]) if c[0] in ("SCRIPT", "FUNCTION") else c[0],
)
def test_a_machine_cannot_run_lua_on_the_broker(two_machines, command):
    (_, reg_a), _ = two_machines
    client = as_machine(reg_a)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)
    client.close()


@pytest.mark.parametrize(
    "attempt",
    [
        lambda c, b: c.set(f"{b.queue}.unacked_mutex", b"mine", nx=True, px=300_000),
        lambda c, b: c.delete(f"{b.queue}.unacked_mutex"),
        lambda c, b: c.zrange(f"{b.queue}.unacked_index", 0, -1),
        lambda c, b: c.rpush(b.queue, b"x" * 1024),
        lambda c, b: c.execute_command("WATCH", b.queue),
    ],
    ids=["take-mutex", "drop-mutex", "read-unacked-index", "stuff-queue", "watch-queue"],
)
def test_a_machine_cannot_touch_another_machines_broker_keys(two_machines, attempt):
    (_, reg_a), reg_b = two_machines
    client = as_machine(reg_a)
    with pytest.raises(redis.exceptions.NoPermissionError):
        attempt(client, reg_b)
    client.close()


@pytest.mark.slow
def test_a_real_worker_receives_acks_and_restores_tasks_without_lua(
    two_machines, redis_broker, agent_env, tmp_path
):
    from celery import Celery

    (machine, registration), _ = two_machines
    queue = registration.queue
    sender = Celery("test-portal", broker=redis_broker)
    admin = redis.Redis.from_url(redis_broker)
    worker = live.Worker(agent_env, tmp_path / "worker.log")
    try:
        # A task its worker took and died with: still in the machine's unacked hash, older
        # than the visibility timeout. The new worker's sweep (the mutex) must restore it.
        stranded = live.send_signed(sender, machine, registration, note="stranded")
        raw = json.loads(admin.rpop(queue))
        info = raw["properties"]["delivery_info"]
        tag = raw["properties"]["delivery_tag"]
        admin.hset(
            f"{queue}.unacked", tag, json.dumps([raw, info["exchange"], info["routing_key"]])
        )
        admin.zadd(f"{queue}.unacked_index", {tag: 0})

        worker.start()
        assert live.result_of(redis_broker, registration, stranded)["status"] == "SUCCESS"
        fresh = live.send_signed(sender, machine, registration, note="fresh")
        assert live.result_of(redis_broker, registration, fresh)["status"] == "SUCCESS"

        # Acknowledged: nothing left queued or waiting for an ack; the mutex was released.
        assert admin.llen(queue) == 0
        assert admin.hlen(f"{queue}.unacked") == 0
        assert admin.zcard(f"{queue}.unacked_index") == 0
        assert not admin.exists(f"{queue}.unacked_mutex")
        assert "NOPERM" not in worker.text() + worker.log.with_suffix(".stderr").read_text()
    finally:
        worker.stop()
        sender.close()
        admin.close()


def test_a_broker_user_made_when_lua_was_allowed_loses_it_at_the_next_sync(
    two_machines, redis_broker
):
    from agents import broker

    (machine_a, reg_a), _ = two_machines
    admin = redis.Redis.from_url(redis_broker)
    assert broker.username_for(machine_a) == f"haven-agent-{reg_a.machine_id}"
    username = f"haven-agent-{reg_a.machine_id}"
    admin.execute_command("ACL", "SETUSER", username, "+evalsha", "+script|load")
    client = as_machine(reg_a)
    assert client.execute_command("SCRIPT", "LOAD", "return 1")  # the old grant

    assert broker.broker_users_sync() == 1

    client = as_machine(reg_a)  # the same password still works
    assert client.llen(reg_a.queue) == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command("SCRIPT", "LOAD", "return 1")
    assert broker.broker_users_sync() == 0
    client.close()
    admin.close()
