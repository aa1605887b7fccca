"""Builders and fixtures for the machine tests (portal side and agent against the portal).

The cast is the shared one (tests/conftest.py). ``agent_env`` gives each test its own storage
directories and agent config directory (a test with the ``vault`` has it too);
``redis_broker`` switches the portal to the real Redis for broker users (and removes the
users a test made).
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from agents.runtime import config as agent_config
from tests.support import builders
from vaults.models import Vault


def make_vault(resource_group, name="vault-one", **extra) -> Vault:
    return builders.make_vault(
        resource_group=resource_group, name=name, container=f"vault-{name}", **extra
    )


@pytest.fixture
def vault(agent_env, vault) -> Vault:
    """The shared vault; a test that has one also has ``agent_env``."""
    return vault


@pytest.fixture
def agent_env(settings, tmp_path, monkeypatch):
    """Storage in temporary directories (Azurite in the servers pass), the agent's config
    in a temporary directory, live pushes dropped, no Redis unless a test asks for it."""
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.SECONDARY_STORAGE_DIR = tmp_path / "storage-secondary"
    settings.REDIS_URL = None
    config_dir = tmp_path / "agent-config"
    monkeypatch.setenv("HAVEN_AGENT_CONFIG_DIR", str(config_dir))
    monkeypatch.setattr("portal.realtime.publish_now", lambda group, html: None)
    return config_dir


ACL_BASELINE: set[str] = set()
# The users the running test made (``redis_broker``): ACL users are the whole Redis
# server's, so another suite on the same server may add its own at any moment.
ACL_MADE: set[str] = set()


@pytest.fixture
def redis_broker(agent_env, settings, redis_url, monkeypatch):
    """The portal manages per-machine Redis users on the test Redis; the ones this test made
    are removed after (only those: other runs may share the Redis, their agents running)."""
    import redis

    from agents import broker

    settings.REDIS_URL = redis_url
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    before = set(admin.acl_users())
    # Users left on the shared Redis by earlier runs are not this test's doing.
    ACL_BASELINE.clear()
    ACL_BASELINE.update(before)
    made = ACL_MADE
    made.clear()
    create = broker.broker_user_create

    def recording(*, machine):
        answer = create(machine=machine)
        made.add(answer.get("broker_username") or "")
        return answer

    monkeypatch.setattr(broker, "broker_user_create", recording)
    yield redis_url
    for user in (made - {""}) & set(admin.acl_users()):
        admin.acl_deluser(user)
    admin.close()


def issue_credentials(vault, user) -> bytes:
    from vaults.credentials import credentials_issue

    _name, content, _record = credentials_issue(vault=vault, issued_by=user)
    return content


def register_directly(vault, user, name="web-01", **extra):
    """Register through the service (no HTTP) and return (machine, Registration)."""
    from agents import services
    from portal import signing

    machine, answer = services.machine_register(
        content=issue_credentials(vault, user), machine_name=name, **extra
    )
    registration = agent_config.Registration(
        portal_url="http://127.0.0.1:9",
        portal_public_key=signing.public_key_b64(),
        portal_fingerprint=signing.key_fingerprint(),
        subscription_id=answer["subscription_id"],
        subscription_name=answer["subscription_name"],
        resource_group=answer["resource_group"],
        vault_id=answer["vault_id"],
        vault_name=answer["vault_name"],
        machine_id=answer["machine_id"],
        machine_name=answer["machine_name"],
        token=answer["token"],
        broker_url=answer["broker_url"],
        broker_transport_options=answer["broker_transport_options"],
        result_key_prefix=answer["result_key_prefix"],
        queue=answer["queue"],
        container=answer["container"],
        grant=answer["grant"],
    )
    return machine, registration


def write_registration(registration, directory) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / agent_config.REGISTRATION_FILE).write_text(json.dumps(asdict(registration)))
