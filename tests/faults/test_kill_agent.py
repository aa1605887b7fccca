"""Real agents killed with SIGKILL mid-job, and a portal that goes away under them.

Each machine is a real ``haven-agent`` (installed by the portal's installer, registered,
its worker on real Redis: tests/e2e/_agent_support.py) talking to a live portal. The
agent's bandwidth limit (2 MB/s both ways) makes a 16 MiB job last long enough to break it
mid-way. The portal goes away for the agent through a loopback ``FaultProxy`` between the
agent and the portal (every connection reset, new ones refused, then accepted again); a
real restart of the portal's process is tests/faults/test_portal_restart.py.
"""

from __future__ import annotations

import filecmp
import json
import os
import random
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e._agent_support import (  # noqa: F401 - fixtures
    agent_machines,
    agent_portal,
    installed_agent,
    vault_owner,
)
from tests.support.faultproxy import FaultProxy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DATA_FILES = 64
FILE_SIZE = 256 * 1024
BANDWIDTH = "2MB"
PACK = 2_000_000  # jobs.backup.pack_size_for(2 MB/s)
ENGINE_WORKERS = max(1, min(os.cpu_count() or 1, 4))


def seed(root: Path, *, seed: int, files: int = DATA_FILES, prefix: str = "file") -> None:
    rng = random.Random(seed)
    for i in range(files):
        folder = root / f"dir-{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{prefix}-{i:02}.bin").write_bytes(rng.randbytes(FILE_SIZE))


def wait(what: str, check, agent, timeout: float = 90, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{agent.log_text()}"
        time.sleep(every)


def finished(job, agent, timeout: float = 90):
    from jobs.models import Job

    def done():
        job.refresh_from_db()
        return job if job.status not in Job.ACTIVE else None

    return wait(f"job {job.pk} to finish", done, agent, timeout)


def files_done(job) -> int:
    job.refresh_from_db()
    return int((job.progress or {}).get("files_done") or 0)


def kill_9(agent) -> None:
    """SIGKILL to the worker and everything it forked, as a crash or a power cut would."""
    pid = agent.process.pid
    os.killpg(pid, signal.SIGKILL)
    agent.process.wait(10)
    assert agent.process.poll() == -signal.SIGKILL


def pack_bytes(machine) -> int:
    from agents.runtime.engine import layout
    from vaults import storage

    with storage.primary_account().store(machine.container) as store:
        return sum(b.size for b in store.list(layout.DATA_PREFIX))


@pytest.fixture
def web01(agent_portal, vault_owner, agent_machines):  # noqa: F811 - the imported fixtures
    from jobs import policy_rules, services

    owner, machines = vault_owner, agent_machines
    agent = machines.register("web-01", owner.credentials, bandwidth_limit=BANDWIDTH)
    data = agent.home / "data"
    seed(data, seed=6)
    spec = policy_rules.default_spec()
    spec["items"] = [str(data)]
    services.policy_save(machine=agent.model, spec=spec, user=owner.user)
    agent.data = data
    agent.owner = owner.user
    return agent


def back_up(agent):
    from jobs import services

    return services.backup_start(machine=agent.model, user=agent.owner)


def restore(agent, point, folder: Path, on_conflict: str):
    from jobs.recovery import services as recovery

    return recovery.restore_start(
        user=agent.owner,
        source=agent.model,
        target=agent.model,
        recovery_point=point.snapshot_id,
        paths=[str(agent.data)],
        folder=str(folder),
        on_conflict=on_conflict,
    )


def restored_files(source: Path, restored: Path) -> list[str]:
    """The source files present under ``restored`` and equal byte for byte."""
    under = restored / str(source).lstrip("/")
    same = []
    for path in sorted(source.rglob("*.bin")):
        there = under / path.relative_to(source)
        if there.exists() and filecmp.cmp(path, there, shallow=False):
            same.append(str(path.relative_to(source)))
    return same


def test_kill_9_mid_restore_fails_the_job_with_the_reason_and_a_rerun_completes(web01):
    from jobs.models import Job, RecoveryPoint

    backup = finished(back_up(web01), web01)
    assert backup.status == Job.Status.COMPLETED, backup.error
    point = RecoveryPoint.objects.get(job=backup)

    target = web01.home / "restored"
    job = restore(web01, point, target, "skip")
    wait("some files restored", lambda: files_done(job) >= 8, web01, every=0.05)
    kill_9(web01)
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING  # the portal has not heard yet
    kept = restored_files(web01.data, target)
    assert 0 < len(kept) < DATA_FILES, "the kill came too late (or too early) to prove anything"

    # The agent comes back (systemd restarts it) and reports what happened, with no sweep.
    web01.start_worker()
    job = finished(job, web01, timeout=60)
    assert job.status == Job.Status.FAILED
    assert "stopped while restoring" in job.error and "Start the restore again" in job.error
    assert "file(s) already restored were kept" in job.error
    assert set(kept) <= set(restored_files(web01.data, target)), "finished files were lost"

    again = finished(restore(web01, point, target, "overwrite"), web01)
    assert again.status == Job.Status.COMPLETED, again.error
    assert len(restored_files(web01.data, target)) == DATA_FILES


def test_kill_9_mid_backup_the_next_backup_completes_and_earlier_points_restore(web01):
    from jobs.models import Job, RecoveryPoint

    first = finished(back_up(web01), web01)
    assert first.status == Job.Status.COMPLETED, first.error
    stored_after_first = pack_bytes(web01.model)
    seed(web01.data, seed=7, prefix="more")  # another 16 MiB

    job = back_up(web01)
    wait("the backup half way", lambda: files_done(job) >= 8, web01, every=0.05)
    kill_9(web01)
    web01.start_worker()
    job = finished(job, web01, timeout=60)
    assert job.status == Job.Status.FAILED and "stopped while backing up" in job.error
    assert not RecoveryPoint.objects.filter(job=job).exists()

    second = finished(back_up(web01), web01)
    assert second.status == Job.Status.COMPLETED, second.error
    # Re-uploaded bytes: at most the pack each engine worker had in hand when it died.
    added = pack_bytes(web01.model) - stored_after_first
    new_data = DATA_FILES * FILE_SIZE
    assert added <= new_data * 1.02 + ENGINE_WORKERS * PACK, (added, new_data)

    # The earlier point still restores, byte for byte.
    target = web01.home / "restored-first"
    point = RecoveryPoint.objects.get(job=first)
    done = finished(restore(web01, point, target, "overwrite"), web01)
    assert done.status == Job.Status.COMPLETED, done.error
    firsts = [p for p in restored_files(web01.data, target) if "/file-" in p]
    assert len(firsts) == DATA_FILES
    assert not list((target / str(web01.data).lstrip("/")).rglob("more-*.bin"))


@pytest.fixture
def behind_proxy(agent_portal, vault_owner, agent_machines):  # noqa: F811 - the imported fixtures
    """web-01 whose agent reaches the portal's API only through a FaultProxy."""
    from jobs import policy_rules, services

    portal = urlsplit(agent_portal)
    owner, machines = vault_owner, agent_machines
    with FaultProxy("127.0.0.1", portal.port) as proxy:
        agent = machines.register(
            "web-01", owner.credentials, bandwidth_limit=BANDWIDTH, start=False
        )
        registration = agent.home / "haven-agent-config" / "registration.json"
        saved = json.loads(registration.read_text())
        saved["portal_url"] = f"http://127.0.0.1:{proxy.port}"
        registration.write_text(json.dumps(saved))
        data = agent.home / "data"
        seed(data, seed=6)
        spec = policy_rules.default_spec()
        spec["items"] = [str(data)]
        services.policy_save(machine=agent.model, spec=spec, user=owner.user)
        agent.data, agent.owner, agent.proxy = data, owner.user, proxy
        agent.start_worker()
        yield agent


def outbox_result(agent) -> dict | None:
    for path in (agent.home / "cache" / "outbox").glob("*.json"):
        entry = json.loads(path.read_text())
        if entry.get("state") == "result":
            return entry
    return None


def test_a_result_outbox_survives_a_worker_restart(behind_proxy):
    from jobs.models import Job, RecoveryPoint

    agent = behind_proxy
    job = back_up(agent)
    wait("the backup running", lambda: files_done(job) >= 4, agent, every=0.05)
    agent.proxy.cut()  # the portal is away from here to the end of the backup
    kept = wait("the result in the outbox", lambda: outbox_result(agent), agent)
    kill_9(agent)  # and the worker dies while it still tries to post it
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING

    agent.proxy.restore()
    agent.start_worker()  # posts what its outbox kept as it starts
    job = finished(job, agent, timeout=60)
    assert job.status == Job.Status.COMPLETED, job.error
    assert str(job.result_id) == kept["result_id"]
    point = RecoveryPoint.objects.get(job=job)
    assert point.snapshot_id == kept["payload"]["recovery_point_id"]
    # (the answer, then the file goes)
    wait("the outbox emptied", lambda: outbox_result(agent) is None, agent, timeout=10)
