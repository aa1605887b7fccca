"""The portal restarts for real under a running backup: the daphne process the agent reports
to and the person watches is killed (SIGKILL, as a crash or an OOM kill would) and started
again on the same port, once mid-backup and once as the backup ends. The job page's live
socket reconnects by itself and its progress moves on; the result, which the agent could not
post while the portal was down, waits in the agent's outbox and arrives once it is back.

The machine registers with the suite's live portal (``agent_portal``); its agent then talks
to a second portal, a daphne process of its own (tests/support/portals.py) on the same
PostgreSQL, Redis and storage, which is the one restarted. PostgreSQL is needed for two
processes on one database: the embedded pass skips it."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
from django.db import connection

from tests.faults._agents import (  # noqa: F401 - fixtures
    agent_portal,
    machines,
    repo_agent,
    vault_owner,
)
from tests.support.portals import PortalProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# 16 MiB at 1 MB/s: about 16 s of upload, room for a restart in the middle and one more
# kill before the end on a busy machine.
FILES, SIZE, BANDWIDTH = 64, 256 * 1024, "1MB"


def _database_url() -> str:
    db = connection.settings_dict
    auth = (db["USER"] or "postgres") + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def restartable_portal(request, settings, tmp_path):
    """A daphne process of its own on the test database, the suite's Redis and storage."""
    if connection.vendor != "postgresql" or not settings.REDIS_URL:
        pytest.skip("a second portal process shares PostgreSQL and Redis (the servers pass)")
    public_url = request.getfixturevalue("agent_portal")  # set up only once it is needed
    env = {
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,  # the test's session cookie is valid there
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "HAVEN_PUBLIC_URL": public_url,
    }
    if settings.AZURE_STORAGE_CONNECTION_STRING:
        env["AZURE_STORAGE_CONNECTION_STRING"] = settings.AZURE_STORAGE_CONNECTION_STRING
    portal = PortalProcess(env, data_dir=tmp_path / "restarted-portal", name="restarted-portal")
    portal.launch()  # it starts while the machine registers (web01 waits for it)
    try:
        yield portal
    finally:
        portal.stop()


@pytest.fixture
def web01(restartable_portal, vault_owner, machines):  # noqa: F811 - the imported fixtures
    """web-01, registered, its agent reporting to the restartable portal."""
    from jobs import policy_rules, services

    agent = machines.register(
        "web-01", vault_owner.credentials, bandwidth_limit=BANDWIDTH, start=False
    )
    registration = agent.home / "haven-agent-config" / "registration.json"
    saved = json.loads(registration.read_text())
    saved["portal_url"] = restartable_portal.url
    registration.write_text(json.dumps(saved))
    data = agent.home / "data"
    data.mkdir()
    rng = random.Random(13)
    for i in range(FILES):
        (data / f"file-{i:02}.bin").write_bytes(rng.randbytes(SIZE))
    spec = {**policy_rules.default_spec(), "items": [str(data)]}
    services.policy_save(machine=agent.model, spec=spec, user=vault_owner.user)
    restartable_portal.wait_ready()
    agent.start_worker()  # its first heartbeat reached the restartable portal
    return agent


def result_waiting(cache: Path) -> bool:
    """Whether the agent's outbox holds a job result it has not delivered yet."""
    for path in (cache / "outbox").glob("*.json"):
        try:
            if json.loads(path.read_text()).get("state") == "result":
                return True
        except (OSError, ValueError):  # replaced while read: look again
            continue
    return False


def wait_for(what: str, check, agent, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{agent.log_text()}"
        time.sleep(0.1)


def test_a_portal_killed_mid_backup_and_at_its_end_shows_the_progress_and_gets_the_result(
    restartable_portal,
    vault_owner,  # noqa: F811 - the imported fixture
    web01,
    page,
):
    from django.test import Client
    from playwright.sync_api import expect

    from jobs import services
    from jobs.models import Job, RecoveryPoint

    portal, agent = restartable_portal, web01
    signed_in = Client()
    signed_in.force_login(vault_owner.user, backend="django.contrib.auth.backends.ModelBackend")
    page.context.add_cookies(
        [{"name": "sessionid", "value": signed_in.cookies["sessionid"].value, "url": portal.url}]
    )
    page.set_default_timeout(30_000)
    wait = {"timeout": 30_000}  # a restart, a reconnect, the outbox's backoff
    job = services.backup_start(machine=agent.model, user=vault_owner.user)
    page.goto(f"{portal.url}/jobs/{job.pk}/")
    body, live = page.locator("body"), page.locator(f"#job-{job.pk}-live")
    files = live.locator("[data-field=files]")
    expect(body).to_have_attribute("data-live", "open", **wait)
    expect(files).to_contain_text(f"of {FILES}", **wait)  # the backup runs and the page shows it

    portal.kill()  # mid-backup
    expect(body).to_have_attribute("data-live", "closed", **wait)
    shown = files.inner_text()
    portal.start()  # same port: the page's socket reconnects by itself
    expect(body).to_have_attribute("data-live", "open", **wait)
    expect(files).not_to_have_text(shown, **wait)  # the progress moves on
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING

    portal.kill()  # again, and it stays down until the backup has ended
    wait_for("the result in the outbox", lambda: result_waiting(agent.home / "cache"), agent)
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING  # not delivered yet
    portal.start()
    # The outbox backs off 1, 2, 4, 8, 16 s… while the portal is down: on a busy machine a
    # restart that takes 15 s puts the next try 16 s after it, so allow two more rounds.
    expect(live.locator("[data-field=status]")).to_have_text("Completed", timeout=90_000)
    job.refresh_from_db()
    assert job.status == Job.Status.COMPLETED, job.error
    point = RecoveryPoint.objects.get(job=job)
    assert (point.file_count, point.logical_bytes) == (FILES, FILES * SIZE)
    wait_for("the outbox emptied", lambda: not result_waiting(agent.home / "cache"), agent, 10)
    assert agent.process.poll() is None  # the same worker throughout
    assert "Traceback" not in portal.log()
