"""Back up now in Chromium on a machine with a real agent: the agent installed by the
portal's installer, registered, its worker on real Redis, backing up real files (16 MiB from
a fixed seed) into the vault's storage. The agent's bandwidth limit (``haven-agent
configure --bandwidth-limit``) slows the upload so the progress bar has time to move.

Every test watches one job page and never reloads it: a script put on the page at the start
(``window.__havenSeen``) must still be there at the end, and it records each value the
progress bar showed."""

from __future__ import annotations

import random
import time
import types

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import sign_in_with_cookie

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DATA_FILES = 64
FILE_SIZE = 256 * 1024
# 16 MiB at 2 MB/s: about 8 s of upload. The engine reports read progress per 4 MiB its
# chunking workers hand back, so the bar moves in quarters while uploads hold it back.
BANDWIDTH = "2MB"

# Records every value the job's progress bar shows, from now on; a reload would lose it.
WATCH_PROGRESS = """(jobId) => {
  window.__havenSeen = [];
  const record = () => {
    const bar = document.querySelector(`#job-${jobId}-live [role=progressbar]`);
    if (bar && bar.hasAttribute("aria-valuenow")) {
      const value = Number(bar.getAttribute("aria-valuenow"));
      const seen = window.__havenSeen;
      if (seen[seen.length - 1] !== value) seen.push(value);
    }
  };
  new MutationObserver(record).observe(document.body,
    {subtree: true, childList: true, attributes: true, attributeFilter: ["aria-valuenow"]});
  record();
}"""


def seed_files(root, *, seed: int = 6) -> None:
    rng = random.Random(seed)
    for i in range(DATA_FILES):
        folder = root / f"dir-{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file-{i:02}.bin").write_bytes(rng.randbytes(FILE_SIZE))


@pytest.fixture
def protected(agent_portal, vault_owner, agent_machines, page):
    """web-01 with a running agent limited to 2 MB/s, a policy over 16 MiB of files, and a
    Chromium page signed in as the vault's owner."""
    from jobs import policy_rules, services

    agent = agent_machines.register("web-01", vault_owner.credentials, bandwidth_limit=BANDWIDTH)
    data = agent.home / "data"
    seed_files(data)
    spec = policy_rules.default_spec()
    spec["items"] = [str(data)]
    services.policy_save(machine=agent.model, spec=spec, user=vault_owner.user)
    page.set_default_timeout(15_000)
    sign_in_with_cookie(page, agent_portal, vault_owner.user)
    return types.SimpleNamespace(
        agent=agent, machine=agent.model, page=page, url=agent_portal, owner=vault_owner
    )


def back_up_now(p):
    """Press Back up now; returns the new job, with its page open and watched."""
    from jobs.models import Job

    before = set(Job.objects.filter(machine=p.machine).values_list("pk", flat=True))
    p.page.goto(f"{p.url}/jobs/machines/{p.machine.pk}/backup-now/")
    p.page.locator("[data-action=back-up]").click()
    p.page.wait_for_url("**/jobs/*/")
    job = Job.objects.filter(machine=p.machine).exclude(pk__in=before).get()
    assert p.page.url.endswith(f"/jobs/{job.pk}/")
    expect(p.page.locator("body")).to_have_attribute("data-live", "open")
    p.page.evaluate(WATCH_PROGRESS, str(job.pk))
    return job


def live(p, job, field: str):
    return p.page.locator(f"#job-{job.pk}-live [data-field={field}]")


def seen(p) -> list[int]:
    """The progress values shown so far; fails if the page was reloaded."""
    values = p.page.evaluate("window.__havenSeen")
    assert values is not None, "the job page was reloaded"
    return values


def wait_for_progress(p, job, timeout: float = 30) -> None:
    """Until the bar shows a value between 0 and 100 (the agent is uploading)."""
    expect(live(p, job, "status")).to_have_text("In progress", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while not any(0 < v < 100 for v in seen(p)):
        assert time.monotonic() < deadline, f"no progress shown: {seen(p)}\n{p.agent.log_text()}"
        time.sleep(0.05)


def test_back_up_now_shows_live_progress_until_completed(protected, screenshot):
    from jobs.models import Job, RecoveryPoint

    p = protected
    job = back_up_now(p)
    wait_for_progress(p, job)
    screenshot("job-progress")
    expect(live(p, job, "status")).to_have_text("Completed", timeout=60_000)
    values = seen(p)
    middle = [v for v in values if 0 < v < 100]
    assert middle, f"the bar should advance step by step, it showed {values}"
    assert values == sorted(values), f"the bar went backwards: {values}"
    expect(live(p, job, "transferred")).not_to_have_text("0\xa0bytes")
    job.refresh_from_db()
    assert job.status == Job.Status.COMPLETED, job.error
    point = RecoveryPoint.objects.get(job=job)
    assert point.file_count == DATA_FILES and point.logical_bytes == DATA_FILES * FILE_SIZE
    # A reload shows the same thing the socket did.
    p.page.reload()
    expect(live(p, job, "status")).to_have_text("Completed")


def test_an_agent_killed_mid_job_ends_failed_with_the_reason_then_recovers(protected, settings):
    from jobs import tasks
    from jobs.models import Job, RecoveryPoint

    p = protected
    job = back_up_now(p)
    wait_for_progress(p, job)
    p.agent.kill()  # SIGKILL to the worker and the engine's processes
    assert p.agent.process.poll() is not None
    # The portal worker's once-a-minute sweep, with a short stall limit.
    settings.HAVEN_JOB_STALL_SECONDS = 3
    deadline = time.monotonic() + 30
    while Job.objects.get(pk=job.pk).status == Job.Status.RUNNING:
        assert time.monotonic() < deadline, "the sweep did not fail the silent job"
        time.sleep(0.5)
        tasks.sweep.apply()
    expect(live(p, job, "status")).to_have_text("Failed")
    expect(live(p, job, "error")).to_contain_text("stopped reporting for more than 3 seconds")
    assert seen(p)  # the same page, never reloaded
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert not RecoveryPoint.objects.filter(machine=p.machine).exists()

    # The agent comes back (systemd restarts it): the crash left the repository usable.
    p.agent.start_worker()
    again = back_up_now(p)
    expect(live(p, again, "status")).to_have_text("Completed", timeout=60_000)
    point = RecoveryPoint.objects.get(job=again)
    assert point.file_count == DATA_FILES and point.logical_bytes == DATA_FILES * FILE_SIZE


def test_cancel_a_running_job_then_back_up_again(protected):
    from jobs.models import Job, RecoveryPoint

    p = protected
    job = back_up_now(p)
    wait_for_progress(p, job)
    p.page.once("dialog", lambda dialog: dialog.accept())
    asked = time.monotonic()
    p.page.locator(f"#job-{job.pk}-live [data-action=cancel]").click()
    expect(live(p, job, "status")).to_have_text("Cancelled", timeout=20_000)
    took = time.monotonic() - asked
    # The portal asks in its answer to the next progress report (the agent posts one at
    # least every 2 s); the engine then finishes the uploads in flight and stops.
    assert took < 15, f"the agent took {took:.1f} s to stop"
    expect(live(p, job, "error")).to_contain_text("no recovery point was made")
    assert seen(p)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert not RecoveryPoint.objects.filter(machine=p.machine).exists()

    # The repository is consistent: the next backup completes, with every file.
    again = back_up_now(p)
    expect(live(p, again, "status")).to_have_text("Completed", timeout=60_000)
    point = RecoveryPoint.objects.get(job=again)
    assert point.file_count == DATA_FILES and point.logical_bytes == DATA_FILES * FILE_SIZE
    listed = p.agent.ok("recovery-points", "--json")
    assert point.snapshot_id in listed
