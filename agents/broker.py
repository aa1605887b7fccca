"""Each machine's own broker account: a Redis ACL user that reaches only its queue.

With ``REDIS_URL`` set, registration creates the user ``haven-agent-<machine id>`` with a
random password and the rule set proven in RECIPES.md ("Redis and Celery"): the machine's
queue ``agent.<id>`` and its priority sub-queues, its ``agent.<id>.*`` keys (unacked
bookkeeping, results under the ``agent.<id>.`` prefix), its kombu binding keys and its
result channels, and only the commands a worker needs (no Lua: ``COMMANDS``). Another
machine's queue, keys and channels answer NOPERM. Unregistering deletes the user, which
also disconnects it.

With the embedded filesystem broker there are no users: the agent must run on the portal's
host and share its broker folder (docs/agent.md).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

from django.conf import settings

# What an agent's worker sends (kombu's Redis transport with the agent's Lua-free mutex,
# agents/runtime/redis_transport.py, and Celery's result backend). No EVAL, EVALSHA,
# SCRIPT, FUNCTION or FCALL: a script runs to its end while Redis answers BUSY to
# everyone else, and a machine must not be able to stall the portal.
COMMANDS = [
    *("hello", "ping", "multi", "exec", "watch", "unwatch", "brpop", "llen", "sadd"),
    *("lpush", "rpush", "hset", "hget", "hdel", "zadd", "zrem", "zrange", "set", "get"),
    *("del", "setex", "publish", "select"),
]
LUA = {"eval", "eval_ro", "evalsha", "evalsha_ro", "script", "function", "fcall", "fcall_ro"}


log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """The portal could not manage the broker's users (Redis down or not an admin)."""


def uses_redis() -> bool:
    return bool(getattr(settings, "REDIS_URL", None))


def username_for(machine) -> str:
    return f"haven-agent-{machine.id}"


def result_key_prefix(machine) -> str:
    return f"{machine.queue}."


def password_sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def acl_rules(queue: str, password: str = "", *, password_hash: str = "") -> list[str]:
    return [
        "reset",
        "on",
        f"#{password_hash}" if password_hash else f">{password}",
        f"~{queue}",
        f"~{queue}.*",
        f"~{queue}\x06\x16*",
        f"~_kombu.binding.{queue}",
        f"~_kombu.binding_permanent.{queue}",
        f"&{queue}.celery-task-meta-*",
        "-@all",
        *[f"+{command}" for command in COMMANDS],
    ]


def transport_options(machine) -> dict:
    """Broker transport options the agent must use (per-machine unacked keys)."""
    if not uses_redis():
        return dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS)
    return {
        "unacked_key": f"{machine.queue}.unacked",
        "unacked_index_key": f"{machine.queue}.unacked_index",
        "unacked_mutex_key": f"{machine.queue}.unacked_mutex",
    }


def _admin():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def agent_broker_url(username: str, password: str) -> str:
    """The URL agents use: ``HAVEN_AGENT_BROKER_URL`` (the address agents reach the portal's
    Redis at) or ``REDIS_URL``, with the machine's own user and password."""
    base = getattr(settings, "HAVEN_AGENT_BROKER_URL", "") or settings.REDIS_URL
    parts = urlsplit(base)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def broker_user_create(*, machine) -> dict:
    """Create the machine's broker user; returns what the agent needs to connect."""
    if not uses_redis():
        return {
            "broker_username": "",
            "broker_password_sha256": "",
            "broker_url": "filesystem://",
            "broker_transport_options": transport_options(machine),
            "result_key_prefix": "",
        }
    import redis

    username = username_for(machine)
    password = secrets.token_urlsafe(32)
    client = _admin()
    try:
        client.execute_command("ACL", "SETUSER", username, *acl_rules(machine.queue, password))
        _acl_save(client)
    except redis.RedisError as exc:
        raise BrokerUnavailable(
            f"could not create the machine's broker user on Redis: {exc}"
        ) from None
    finally:
        client.close()
    return {
        "broker_username": username,
        "broker_password_sha256": password_sha256(password),
        "broker_url": agent_broker_url(username, password),
        "broker_transport_options": transport_options(machine),
        "result_key_prefix": result_key_prefix(machine),
    }


def broker_user_delete(*, username: str) -> None:
    """Delete the user (Redis disconnects its clients). Idempotent."""
    if not username or not uses_redis():
        return
    import redis

    client = _admin()
    try:
        client.execute_command("ACL", "DELUSER", username)
        _acl_save(client)
    except redis.RedisError as exc:
        raise BrokerUnavailable(
            f"could not delete broker user {username} on Redis: {exc}"
        ) from None
    finally:
        client.close()


def _acl_save(client) -> None:
    """Persist users when Redis keeps them in an ACL file (``aclfile``); without one, Redis
    forgets them on restart and ``broker_users_sync`` puts them back."""
    import redis

    try:
        client.execute_command("ACL", "SAVE")
    except redis.ResponseError as exc:
        if "ACL file" not in str(exc):
            raise


def _allows_lua(client, username: str) -> bool:
    """Was the user made by an older portal, which let agents run Lua?"""
    granted = client.acl_getuser(username)["commands"]
    return any(c.startswith("+") and c[1:].split("|")[0].lower() in LUA for c in granted)


def broker_users_sync() -> int:
    """Re-create the broker users of registered machines that Redis no longer has (after a
    Redis restart without an ACL file), and reset those made when agents could still run
    Lua; returns how many were written. Idempotent."""
    if not uses_redis():
        return 0
    import redis

    from agents.models import Machine

    client = _admin()
    restored = 0
    try:
        existing = {
            u.decode() if isinstance(u, bytes) else u
            for u in client.execute_command("ACL", "USERS")
        }
        machines = Machine.objects.filter(
            unregistered_at__isnull=True, broker_username__gt="", broker_password_sha256__gt=""
        )
        for machine in machines:
            if machine.broker_username in existing and not _allows_lua(
                client, machine.broker_username
            ):
                continue
            client.execute_command(
                "ACL",
                "SETUSER",
                machine.broker_username,
                *acl_rules(machine.queue, password_hash=machine.broker_password_sha256),
            )
            restored += 1
        if restored:
            _acl_save(client)
            log.warning(
                "restored %d machine broker user(s) that Redis had lost or that still allowed Lua",
                restored,
            )
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"could not check the machines' broker users: {exc}") from None
    finally:
        client.close()
    return restored
