"""Redis restarts in the middle of a backup, and comes back without the machines' ACL users
(no ACL file): the backup carries on and completes (its progress and result go to the
portal over HTTP, and the portal's rate limiter counts in the process while its cache, the
same Redis, is away), the portal recreates the machine's broker user (``broker_users_sync``), the agent
logs in again by itself, and the next Back up now runs.

A backup that ends while the user is still missing cannot be acknowledged then: the worker
keeps the acknowledgement until it has logged in again, and makes it once the portal has put
the user back; the next job runs.

The Redis here is a private one on a free port (the portal's broker, cache and channel
layer, and the agents' broker), so the test may stop and start it; the shared server is
never touched."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time

import pytest
import redis

from tests.faults._agents import (  # noqa: F401 - fixtures
    agent_portal,
    machines,
    repo_agent,
    vault_owner,
    wait_for_job,
)
from tests.support.servers import free_port, port_open

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


class PrivateRedis:
    """redis-server on a free port, with its data on disk (AOF) but no ACL file: users
    created at run time are gone after a restart, as with a default install."""

    def __init__(self, folder):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [
            shutil.which("redis-server") or "redis-server",
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
        ]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def private_redis(tmp_path):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = PrivateRedis(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(private_redis, settings) -> str:
    """The portal's Redis for this module: the private one, as its broker (agent_portal
    uses this fixture) and its cache (the agent API's rate limiter), in this process and
    in the live portal forked from it."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": private_redis.url,
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
    return private_redis.url


def seed(folder, *, files: int = 32, size: int = 256 * 1024, seed: int = 21) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(files):
        (folder / f"file-{i:02}.bin").write_bytes(rng.randbytes(size))


def start_backup_and_restart_redis(private_redis, owner, running):
    """web-01 backing up 8 MiB at 1 MB/s, and Redis restarted (its users gone) meanwhile."""
    from jobs import policy_rules, services
    from jobs.models import Job

    agent = running.register("web-01", owner.credentials, bandwidth_limit="1MB")
    seed(agent.home / "data")
    machine = agent.model
    spec = {**policy_rules.default_spec(), "items": [str(agent.home / "data")]}
    services.policy_save(machine=machine, spec=spec, user=owner.user)
    job = services.backup_start(machine=machine, user=owner.user)
    deadline = time.monotonic() + 60
    while Job.objects.get(pk=job.pk).status != Job.Status.RUNNING:
        assert time.monotonic() < deadline, agent.log_text()
        time.sleep(0.1)

    private_redis.stop()
    time.sleep(2.0)
    private_redis.start()
    admin = redis.Redis.from_url(private_redis.url, decode_responses=True)
    assert machine.broker_username not in admin.acl_users()  # Redis forgot it
    admin.close()
    return agent, machine, job


def test_redis_restarting_mid_backup_without_its_acl_users_loses_nothing(
    private_redis,
    vault_owner,  # noqa: F811
    machines,  # noqa: F811
):
    from agents import broker
    from jobs import services
    from jobs.models import Job, RecoveryPoint

    agent, machine, job = start_backup_and_restart_redis(private_redis, vault_owner, machines)
    # Beat's sync (every 2 minutes) puts the user back while the backup still runs.
    assert broker.broker_users_sync() == 1
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING  # restarted mid-backup

    job = wait_for_job(job, agent, timeout=120)
    assert job.status == Job.Status.COMPLETED, job.error
    assert RecoveryPoint.objects.get(job=job).file_count == 32
    again = wait_for_job(services.backup_start(machine=machine), agent, timeout=60)
    assert again.status == Job.Status.COMPLETED, again.error


def test_an_agent_that_acked_while_its_broker_user_was_missing_runs_the_next_job(
    private_redis,
    vault_owner,  # noqa: F811
    machines,  # noqa: F811
):
    """The backup's task ends (acks_late) while Redis has no user for the machine. Celery's
    thread pool hands the acknowledgement to the consumer, which makes it once it has logged
    in again: the message stays in the machine's ``unacked`` hash (kept by Redis through the
    restart, in its AOF) until the portal recreates the user, then leaves it, so it is never
    delivered again, and the worker takes the next job."""
    from agents import broker
    from jobs import services
    from jobs.models import Job

    agent, machine, job = start_backup_and_restart_redis(private_redis, vault_owner, machines)
    job = wait_for_job(job, agent, timeout=120)
    assert job.status == Job.Status.COMPLETED, job.error
    # The worker tries to log in again after the task ended, and is refused: the
    # acknowledgement is due while the user is missing.
    deadline = time.monotonic() + 40
    while True:
        log = agent.log_text()
        ended = re.search(r"haven\.agent\.backup\[[-0-9a-f]+\] succeeded", log)
        if ended and "invalid username-password pair" in log[ended.end() :]:
            break
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.5)
    admin = redis.Redis.from_url(private_redis.url, decode_responses=True)
    unacked = f"{machine.queue}.unacked"
    try:
        assert admin.hlen(unacked) == 1  # the backup's message, not acknowledged yet

        assert broker.broker_users_sync() == 1

        again = wait_for_job(services.backup_start(machine=machine), agent, timeout=60)
        assert again.status == Job.Status.COMPLETED, again.error
        deadline = time.monotonic() + 10
        while admin.hlen(unacked):  # the next one's acknowledgement follows its result
            assert time.monotonic() < deadline, admin.hgetall(unacked)
            time.sleep(0.2)
    finally:
        admin.close()
    assert "Couldn't ack" not in agent.log_text()
