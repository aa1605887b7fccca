"""One machine cannot reach another's work, and an unregistered machine reaches nothing:
broker users answer NOPERM outside their own keys, and unregistering revokes the token,
the broker user and the storage grant at once."""

from __future__ import annotations

import pytest
import redis

from agents import services
from tests.agents.conftest import register_directly

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def two_machines(redis_broker, vault, alice):
    machine_a, reg_a = register_directly(vault, alice, "agent-a")
    machine_b, reg_b = register_directly(vault, alice, "agent-b")
    return (machine_a, reg_a), (machine_b, reg_b)


def as_machine(registration) -> redis.Redis:
    return redis.Redis.from_url(registration.broker_url, socket_timeout=5)


def test_a_machine_works_its_own_queue_and_results(two_machines):
    (_, reg_a), _ = two_machines
    client = as_machine(reg_a)
    assert client.ping()
    client.lpush(reg_a.queue, b"x")
    assert client.llen(reg_a.queue) == 1
    assert client.brpop([reg_a.queue], timeout=1)[1] == b"x"
    result_key = f"{reg_a.result_key_prefix}celery-task-meta-123"
    client.set(result_key, b"{}", ex=60)
    assert client.get(result_key) == b"{}"
    client.publish(result_key, b"{}")
    client.hset(f"{reg_a.queue}.unacked", "tag", b"m")
    client.hdel(f"{reg_a.queue}.unacked", "tag")
    client.sadd(f"_kombu.binding.{reg_a.queue}", b"binding")
    client.delete(result_key, f"_kombu.binding.{reg_a.queue}")
    client.close()


@pytest.mark.parametrize(
    "attempt",
    [
        lambda c, b: c.llen(b.queue),
        lambda c, b: c.brpop([b.queue], timeout=1),
        lambda c, b: c.lpush(b.queue, b"forged"),
        lambda c, b: c.get(f"{b.result_key_prefix}celery-task-meta-1"),
        lambda c, b: c.set(f"{b.result_key_prefix}celery-task-meta-1", b"{}", ex=60),
        lambda c, b: c.publish(f"{b.result_key_prefix}celery-task-meta-1", b"{}"),
        lambda c, b: c.hget(f"{b.queue}.unacked", "tag"),
        lambda c, b: c.sadd(f"_kombu.binding.{b.queue}", b"x"),
        lambda c, b: c.llen("portal"),
        lambda c, b: c.keys("*"),
        lambda c, b: c.acl_list(),
        lambda c, b: c.flushdb(),
    ],
    ids=[
        "read-queue",
        "take-task",
        "put-task",
        "read-result",
        "write-result",
        "announce-result",
        "read-unacked",
        "rebind-queue",
        "portal-queue",
        "list-keys",
        "acl",
        "flush",
    ],
)
def test_agent_a_gets_noperm_on_agent_b(two_machines, attempt):
    (_, reg_a), (_, reg_b) = two_machines
    client = as_machine(reg_a)
    with pytest.raises(redis.exceptions.NoPermissionError):
        attempt(client, reg_b)
    client.close()


def test_unregistering_revokes_token_broker_user_and_grant(
    live_server, settings, redis_broker, vault, alice, client
):
    from agents.runtime.blobstore import BlobForbidden, open_grant

    settings.HAVEN_PUBLIC_URL = live_server.url  # where the local backend's grants point
    machine, registration = register_directly(vault, alice, "web-01")
    store = open_grant(registration.grant)
    store.put("probe", b"ok")
    connected = as_machine(registration)
    assert connected.llen(registration.queue) == 0
    auth = {"HTTP_AUTHORIZATION": f"Bearer {registration.token}"}
    assert client.post("/api/agent/heartbeat/", "{}", "application/json", **auth).status_code == 200

    services.machine_unregister(machine=machine)

    answer = client.post("/api/agent/heartbeat/", "{}", "application/json", **auth)
    assert answer.status_code == 401 and answer.json()["error"] == "unauthenticated"
    # The user is gone: an open connection is dropped and a new one is refused.
    with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.AuthenticationError)):
        connected.llen(registration.queue)
    with pytest.raises(redis.exceptions.AuthenticationError):
        as_machine(registration).ping()
    with pytest.raises(BlobForbidden):
        store.get("probe")
    with pytest.raises(BlobForbidden):
        open_grant(registration.grant).put("after", b"no")
    store.close()


def test_endpoints_refuse_a_vault_that_is_not_the_machines(
    redis_broker, vault, alice, resource_group, client
):
    from tests.agents.conftest import make_vault

    _machine, registration = register_directly(vault, alice, "web-01")
    other = make_vault(resource_group, name="vault-two")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {registration.token}"}
    for endpoint in ("heartbeat", "grant", "unregister"):
        answer = client.post(
            f"/api/agent/{endpoint}/",
            {"vault_id": str(other.pk)},
            "application/json",
            **auth,
        )
        assert answer.status_code == 404, endpoint
    ok = client.post(
        "/api/agent/heartbeat/", {"vault_id": str(vault.pk)}, "application/json", **auth
    )
    assert ok.status_code == 200


def test_broker_users_lost_by_redis_are_restored_with_the_same_password(redis_broker, vault, alice):
    from agents.broker import broker_users_sync

    machine, registration = register_directly(vault, alice, "web-01")
    admin = redis.Redis.from_url(redis_broker)
    admin.acl_deluser(machine.broker_username)  # as after a Redis restart without aclfile
    with pytest.raises(redis.exceptions.AuthenticationError):
        as_machine(registration).ping()
    assert broker_users_sync() == 1
    assert as_machine(registration).llen(registration.queue) == 0
    assert broker_users_sync() == 0
    admin.close()
