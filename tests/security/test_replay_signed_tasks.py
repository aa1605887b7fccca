"""Signed tasks cannot be replayed: someone holding a machine's broker password (or reading
its queue) can capture genuine portal messages and push them again. A real agent worker on
the real Redis refuses a message it already ran, one past its expiry, and a policy older
than the one it applied."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from agents.dispatch import deliver, message_lifetime, signed_message
from agents.runtime import protocol
from agents.runtime.tasks import PING
from tests.agents import conftest as agents
from tests.agents import test_worker as live
from tests.agents.conftest import register_directly, write_registration

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
# The agents' fixtures: the agent's config in a temporary folder, per-machine Redis users.
agent_env = agents.agent_env
redis_broker = agents.redis_broker


@pytest.fixture
def machine(redis_broker, vault, alice, agent_env):
    machine, registration = register_directly(vault, alice, "web-01")
    write_registration(registration, agent_env)
    return machine, registration


@pytest.fixture
def worker(agent_env, tmp_path):
    running = live.Worker(agent_env, tmp_path / "worker.log")
    yield running
    running.stop()


@pytest.fixture
def sender(redis_broker):
    from celery import Celery

    app = Celery("test-portal", broker=redis_broker)
    yield app
    app.close()


def pongs(worker, note: str) -> int:
    return worker.text().count(f"pong (note={note!r})")


def test_a_captured_signed_message_delivered_again_is_not_run_again(
    machine, worker, sender, redis_broker
):
    machine, registration = machine
    worker.start()
    task_id = str(uuid.uuid4())
    captured = signed_message(machine, PING, task_id, {"note": "once"})
    deliver(registration.queue, PING, task_id, captured, app=sender)
    assert live.result_of(redis_broker, registration, task_id)["status"] == "SUCCESS"

    deliver(registration.queue, PING, task_id, captured, app=sender)  # the replay

    worker.wait_for(f"REFUSED task {PING} [{task_id}] was already run by this agent")
    assert pongs(worker, "once") == 1
    # Refusing is not being stuck: genuine work still runs.
    fresh = live.send_signed(sender, machine, registration, note="after")
    assert live.result_of(redis_broker, registration, fresh)["status"] == "SUCCESS"


def test_a_replay_is_refused_after_the_worker_restarts(machine, worker, sender, redis_broker):
    machine, registration = machine
    worker.start()
    task_id = str(uuid.uuid4())
    captured = signed_message(machine, PING, task_id, {"note": "restart"})
    deliver(registration.queue, PING, task_id, captured, app=sender)
    assert live.result_of(redis_broker, registration, task_id)["status"] == "SUCCESS"
    worker.stop()
    worker.start()

    deliver(registration.queue, PING, task_id, captured, app=sender)

    worker.wait_for(f"REFUSED task {PING} [{task_id}] was already run by this agent")
    assert pongs(worker, "restart") == 1


def test_an_expired_signed_message_is_refused_and_says_to_check_the_clock(
    machine, worker, sender, redis_broker
):
    machine, registration = machine
    worker.start()
    task_id = str(uuid.uuid4())
    long_ago = datetime.now(UTC) - message_lifetime(PING) - timedelta(minutes=10)
    old = signed_message(machine, PING, task_id, {"note": "stale"}, now=long_ago)

    deliver(registration.queue, PING, task_id, old, app=sender)

    text = worker.wait_for(f"REFUSED task {PING} [{task_id}] expired at")
    assert "check this machine's clock" in text
    assert pongs(worker, "stale") == 0


def test_a_message_late_by_less_than_the_clock_tolerance_still_runs(
    machine, worker, sender, redis_broker
):
    machine, registration = machine
    worker.start()
    task_id = str(uuid.uuid4())
    just_expired = datetime.now(UTC) - message_lifetime(PING) - timedelta(minutes=1)
    message = signed_message(machine, PING, task_id, {"note": "skewed"}, now=just_expired)
    deliver(registration.queue, PING, task_id, message, app=sender)
    assert live.result_of(redis_broker, registration, task_id)["status"] == "SUCCESS"


def test_an_older_policy_pushed_again_does_not_replace_the_applied_one(
    machine, worker, sender, redis_broker, agent_env
):
    """The attacker took version 1's message off the queue before the agent saw it and
    pushes it after version 2 was applied: its id was never run, its signature is genuine,
    it has not expired, and the version check alone refuses it."""
    machine, registration = machine
    spec = {"items": ["/srv"], "frequency": "daily", "times": ["01:00"], "retention": {}}
    withheld_id, v2_id = str(uuid.uuid4()), str(uuid.uuid4())
    withheld = signed_message(
        machine,
        protocol.POLICY_TASK,
        withheld_id,
        {"policy": {**spec, "items": ["/"]}, "version": 1, "spec_hash": "v1"},
    )
    v2 = signed_message(
        machine, protocol.POLICY_TASK, v2_id, {"policy": spec, "version": 2, "spec_hash": "v2"}
    )
    worker.start()
    deliver(registration.queue, protocol.POLICY_TASK, v2_id, v2, app=sender)
    worker.wait_for(f"Task {protocol.POLICY_TASK}[{v2_id}]")
    # the log says "received"; with a pool of threads the task runs just after that line
    assert applied_version(agent_env / "policy.json") == 2

    deliver(registration.queue, protocol.POLICY_TASK, withheld_id, withheld, app=sender)

    worker.wait_for("REFUSED policy version 1 is older than the applied version 2")
    applied = json.loads((agent_env / "policy.json").read_text())
    assert (applied["version"], applied["spec"]["items"]) == (2, ["/srv"])


def applied_version(path, timeout: float = 30) -> int | None:
    """The version in the agent's policy.json once it is there (or None at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())["version"]
        time.sleep(0.1)
    return None
