"""PostgreSQL restarts while a real agent backs up: a live portal (Daphne) whose database
connection goes through a ``FaultProxy`` in front of the shared PostgreSQL; the proxy cuts
every connection and refuses new ones for a few seconds mid-backup, as a restart would. The
agent's posts meanwhile get errors, the backup carries on, its result arrives once the
database is back, the recovery point is recorded, and verify over the machine's repository
finds every committed point intact."""

from __future__ import annotations

import random
import time

import pytest

from tests.e2e import _agent_support as live
from tests.faults._repo_support import verify_every_point
from tests.support.faultproxy import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
# A live portal, real agents installed by its installer (tests/e2e/_agent_support.py).
agent_portal = live.agent_portal
agent_machines = live.agent_machines
installed_agent = live.installed_agent
vault_owner = live.vault_owner

# 16 MiB at 2 MB/s: about 8 s of upload, long enough to cut the database mid-way.
FILES, SIZE, BANDWIDTH = 32, 512 * 1024, "2MB"


@pytest.fixture
def portal_db_proxy(transactional_db):
    """The portal's PostgreSQL, behind a proxy: a server forked while this is in place
    connects through it; ``direct()`` points this process back at PostgreSQL itself."""
    from django.db import connections

    conn = connections["default"]
    if conn.vendor != "postgresql":
        pytest.skip("PostgreSQL runs in the servers pass (DATABASE_URL)")
    host, port = conn.settings_dict["HOST"] or "127.0.0.1", conn.settings_dict["PORT"] or 5432
    with FaultProxy("127.0.0.1" if host == "localhost" else host, int(port)) as proxy:
        connections.close_all()
        conn.settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port))

        def direct():
            connections.close_all()
            conn.settings_dict.update(HOST=host, PORT=port)

        proxy.direct = direct
        try:
            yield proxy
        finally:
            direct()


@pytest.fixture
def portal_through_proxy(portal_db_proxy, agent_portal):
    """The live portal, forked while the proxy was in place; this process goes direct."""
    portal_db_proxy.direct()
    return agent_portal


def test_postgresql_restarting_during_a_backup_loses_nothing(
    portal_db_proxy, portal_through_proxy, vault_owner, agent_machines
):
    from agents.runtime import passphrase as pp
    from jobs import policy_rules
    from jobs import services as job_services
    from jobs.models import Job, RecoveryPoint
    from jobs.services.pruning import repository_store

    proxy = portal_db_proxy
    agent = agent_machines.register("web-01", vault_owner.credentials, bandwidth_limit=BANDWIDTH)
    data = agent.home / "data"
    rng = random.Random(7)
    data.mkdir()
    for i in range(FILES):
        (data / f"file-{i:02}.bin").write_bytes(rng.randbytes(SIZE))
    spec = policy_rules.default_spec()
    spec["items"] = [str(data)]
    job_services.policy_save(machine=agent.model, spec=spec, user=vault_owner.user)

    job = job_services.backup_start(machine=agent.model, user=vault_owner.user)
    deadline = time.monotonic() + 60
    while not (Job.objects.get(pk=job.pk).progress or {}).get("bytes_done"):
        assert time.monotonic() < deadline, f"the backup did not start:\n{agent.log_text()}"
        time.sleep(0.1)
    before = proxy.connections
    proxy.cut()  # PostgreSQL "restarts": every connection reset, new ones refused
    time.sleep(4)
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING
    proxy.restore()

    deadline = time.monotonic() + 120
    while Job.objects.get(pk=job.pk).status in Job.ACTIVE:
        assert time.monotonic() < deadline, f"the job did not finish:\n{agent.log_text()}"
        time.sleep(0.5)
    job.refresh_from_db()
    log = agent.log_text()
    assert job.status == Job.Status.COMPLETED, (job.status, job.error, log)
    # The portal met the outage (its pool reconnected through the proxy afterwards); a
    # report that needed the database then was answered 503 with Retry-After, which the
    # agent waits out (tests/portal/test_database_away.py), or did not need it (steady
    # reports go to the cache): either way the backup went on, and nothing was lost.
    assert "answered 500" not in log, log
    assert proxy.connections > before, "the portal connected again after the restart"
    point = RecoveryPoint.objects.get(job=job)
    assert point.file_count == FILES and point.logical_bytes == FILES * SIZE

    store = repository_store(agent.model)
    points = verify_every_point(store, pp.read_file(agent.passphrase_file))
    store.close()
    assert points == [point.snapshot_id]
