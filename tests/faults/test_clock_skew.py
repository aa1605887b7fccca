"""This machine's clock is 10 minutes off the portal's (and the storage's). The agent's
clock is read at three seams — signed-task verification (``tasksig.verify_task``), the
grant's expiry (``storage_grant.renew_grant``) and the store's own expiry check — and a test
cannot move the real clock, so it hands the skewed time to those seams. The portal, the
grant and Azure Storage (Azurite) are real, and the SAS is judged by the storage's clock.

Ahead by 10 minutes: signed tasks run, the grant works and is renewed before the storage
would refuse it. Behind by 10 minutes: a task is refused with a message saying to check the
clock (issue 12's 5-minute tolerance), and a grant that has really expired — which this
machine still thinks valid — is renewed instead of failing every request with 403.
Each test ends with a backup through the grant and verify over the repository."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from agents.dispatch import signed_message
from agents.runtime import engine
from agents.runtime.storage_grant import open_store, renew_grant, time_left
from agents.runtime.tasks import PING
from agents.runtime.tasksig import TaskRefused, verify_task
from tests.agents import conftest as agents
from tests.agents.conftest import register_directly
from tests.faults._repo_support import FAST_KDF, PASSPHRASE, seed_tree, verify_every_point

pytestmark = pytest.mark.django_db(transaction=True)
agent_env = agents.agent_env
redis_broker = agents.redis_broker
SKEW = timedelta(minutes=10)


class GrantAPI:
    """The agent's ``PortalClient.post`` for ``grant/``, through the portal's real view
    (Django's test client: the token, the JSON body, the machine API's checks)."""

    def __init__(self, token: str):
        from django.test import Client

        self.client, self.token, self.calls = Client(), token, 0

    def post(self, path: str, payload: dict) -> dict:
        self.calls += 1
        answer = self.client.post(
            f"/api/agent/{path}",
            data=json.dumps(payload),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {self.token}",
        )
        assert answer.status_code == 200, answer.content
        return answer.json()


@pytest.fixture
def machine(redis_broker, vault, alice):
    from vaults.storage import primary_account

    if primary_account().kind != "azure":
        pytest.skip("the grant opens Azure Storage (Azurite) in the servers pass")
    made, registration = register_directly(vault, alice, "web-01")
    yield made, registration
    primary_account().delete_container(registration.container)


def back_up_and_verify(registration, tmp_path) -> None:
    store = open_store(registration.grant)
    try:
        repo = engine.Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
        seed_tree(tmp_path / "data", files=3, size=32 << 10)
        made = engine.run_backup(repo, sources=[tmp_path / "data"])
        assert made.status == "completed", made.message
        assert verify_every_point(store) == [made.recovery_point]
    finally:
        store.close()


def ping(machine, registration):
    task_id = str(uuid.uuid4())
    kwargs = signed_message(machine, PING, task_id, {"note": "clock"})
    return lambda now: verify_task(
        task=PING,
        task_id=task_id,
        args=[],
        kwargs=kwargs,
        machine_id=registration.machine_id,
        public_key_b64=registration.portal_public_key,
        now=now,
    )


def test_a_clock_10_minutes_ahead_still_runs_signed_tasks_and_uses_its_grant(machine, tmp_path):
    made, registration = machine
    ahead = datetime.now(UTC) + SKEW
    expires = ping(made, registration)(ahead)
    assert expires > datetime.now(UTC)

    # 24 h grant: seen from 10 minutes ahead it is still good, and not renewed yet
    api = GrantAPI(registration.token)
    assert not renew_grant(registration, api, save=False, now=ahead)
    assert api.calls == 0
    # near its end (by this clock) it is renewed while the storage would still take it
    registration.grant = dict(registration.grant)
    near_end = datetime.fromisoformat(registration.grant["expires_at"]) - timedelta(minutes=12)
    assert renew_grant(registration, api, save=False, now=near_end + SKEW)
    assert api.calls == 1 and time_left(registration.grant) > timedelta(hours=23)
    back_up_and_verify(registration, tmp_path)


def test_a_clock_10_minutes_behind_refuses_signed_tasks_saying_to_check_the_clock(
    machine, tmp_path
):
    made, registration = machine
    with pytest.raises(TaskRefused) as caught:
        ping(made, registration)(datetime.now(UTC) - SKEW)
    assert "later than this machine's time" in str(caught.value)
    assert "check this machine's clock" in str(caught.value)
    back_up_and_verify(registration, tmp_path)


def test_a_clock_10_minutes_behind_renews_a_grant_the_storage_already_refuses(
    machine, tmp_path, settings
):
    from vaults.storage import AGENT_PERMISSIONS, primary_account

    _, registration = machine
    # A grant that really ends in 2 s; this machine's clock, 10 minutes behind, thinks it
    # has 10 minutes left once it has gone.
    registration.grant = primary_account().issue_grant(
        registration.container,
        expires_at=datetime.now(UTC) + timedelta(seconds=2),
        permissions=AGENT_PERMISSIONS,
    )
    time.sleep(3)
    behind = datetime.now(UTC) - SKEW
    assert time_left(registration.grant, now=behind) > timedelta(minutes=9)
    # Azure refuses it from now on (Azurite 3.35 does not: it ignores the expiry of a SAS
    # that names a stored access policy, tests/vaults/storage/test_azure_grants.py), so the
    # grant must be renewed although this machine's clock says it is good.
    api = GrantAPI(registration.token)
    assert renew_grant(registration, api, save=False, now=behind)
    assert api.calls == 1
    back_up_and_verify(registration, tmp_path)
