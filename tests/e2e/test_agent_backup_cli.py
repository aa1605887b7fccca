"""``haven-agent backup --wait`` on a machine with a real agent: the agent installed by the
portal's installer, registered, its worker on real Redis. The portal refuses a machine
without a policy in its own words; with one, the command follows the job the worker runs
(plain lines: its stdout is not a terminal), the portal records the recovery point, and the
job shows in the portal's job list as started on the machine. Ctrl-C stops the waiting,
not the backup."""

from __future__ import annotations

import json
import random
import signal
import subprocess

import pytest

from tests.e2e._agent_support import signed_in_session

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FILES, FILE_SIZE = 16, 256 * 1024


def test_haven_agent_backup_wait_runs_a_backup_the_portal_records(
    agent_portal, vault_owner, agent_machines
):
    from jobs import policy_rules, services
    from jobs.models import Job, RecoveryPoint

    agent = agent_machines.register("web-01", vault_owner.credentials)
    refused = agent.run("backup")
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"error: {services.NoPolicy(agent.model)}"

    data = agent.home / "data"
    data.mkdir()
    rng = random.Random(17)
    for i in range(FILES):
        (data / f"file-{i:02}.bin").write_bytes(rng.randbytes(FILE_SIZE))
    spec = policy_rules.default_spec()
    spec["items"] = [str(data)]
    services.policy_save(machine=agent.model, spec=spec, user=vault_owner.user)

    followed = agent.run("backup", "--wait", timeout=180)
    assert followed.returncode == 0, followed.stdout + followed.stderr + agent.log_text()
    job = Job.objects.get(machine=agent.model, operation=Job.Operation.BACKUP)
    url = f"{agent_portal}/jobs/{job.pk}/"
    lines = followed.stdout.splitlines()
    assert lines[:2] == [f"Backup of web-01 started: job {job.pk}", f"  {url}"]
    assert lines[-1] == "Backup completed." and "\r" not in followed.stdout
    assert job.status == Job.Status.COMPLETED and job.started_on_machine
    point = RecoveryPoint.objects.get(job=job)
    assert point.file_count == FILES and point.logical_bytes == FILES * FILE_SIZE

    # --json: one document; the portal's refusal while nothing runs is not the case here,
    # a second backup starts and ends the same way.
    again = agent.run("backup", "--wait", "--json", timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    doc = json.loads(again.stdout)
    assert doc["ok"] is True and doc["status"] == "completed"
    assert doc["url"] == f"{agent_portal}/jobs/{doc['job_id']}/"

    page = signed_in_session(agent_portal, vault_owner.user).get(
        f"{agent_portal}/jobs/?vault={vault_owner.vault.pk}", timeout=30
    )
    assert page.status_code == 200
    assert f"/jobs/{job.pk}/" in page.text and f"/jobs/{doc['job_id']}/" in page.text
    assert page.text.count("(started on the machine)") == 2

    # Ctrl-C while waiting stops the waiting only; the job stays for the worker.
    agent.stop()
    waiting = subprocess.Popen(
        [str(agent.agent), "backup", "--wait"],
        env=agent.env,
        cwd=agent.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as at a terminal: a suite started in the background (``make test &``)
        # has SIGINT ignored, and a child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert waiting.stdout is not None
    assert waiting.stdout.readline().startswith("Backup of web-01 started: job ")
    assert waiting.stdout.readline().startswith(f"  {agent_portal}/jobs/")
    assert waiting.stdout.readline().startswith(("Backup queued", "Backup waiting"))
    waiting.send_signal(signal.SIGINT)
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 130, out + err
    assert "Stopped waiting. The backup goes on in this machine's worker" in out
    left = Job.objects.filter(machine=agent.model).order_by("-created_at").first()
    assert left is not None and left.is_active
