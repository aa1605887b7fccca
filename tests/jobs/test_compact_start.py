"""Starting Compact jobs: Compact now on the machine's page (owner, Backup Operator, Reader,
outsider) and the daily run after retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents.runtime import protocol
from jobs import services, tasks
from jobs.models import Job
from portal.models import Role
from tests.jobs.conftest import make_machine, stored_point
from vaults.models import ActivityEntry

pytestmark = pytest.mark.django_db


def with_point(machine):
    stored_point(machine, "c0" * 16, ["c1" * 16])
    services.recovery_point_create(
        job=services.backup_start(machine=machine),
        snapshot_id="c0" * 16,
        manifest_blob=f"snapshots/{'c0' * 16}",
        stats={},
        pack_ids=["c1" * 16],
        now=timezone.now(),
    )
    Job.objects.update(status=Job.Status.COMPLETED)
    return machine


def test_a_backup_operator_starts_a_compaction_from_the_machine_page(client, member, machine, sent):
    with_point(machine)
    client.force_login(member(Role.BACKUP_OPERATOR))
    page = client.get(f"/machines/{machine.pk}/").content.decode()
    assert 'data-action="compact"' in page and "Compact now" in page
    response = client.post(f"/jobs/machines/{machine.pk}/compact/")
    job = Job.objects.get(operation=Job.Operation.COMPACT)
    assert response.status_code == 302 and response.url == f"/jobs/{job.pk}/"
    assert job.details[protocol.COMPACT_THRESHOLD] == 0.2
    assert (str(machine.pk), protocol.COMPACT_TASK, {"job_id": str(job.pk)}) in sent
    assert ActivityEntry.objects.filter(operation="compact.now", outcome="succeeded").exists()
    page = client.get(response.url).content.decode()
    assert "Compact" in page and "Compaction of" in page
    # a second press shows the one running
    again = client.post(f"/jobs/machines/{machine.pk}/compact/")
    assert again.url == f"/jobs/{job.pk}/"
    assert Job.objects.filter(operation=Job.Operation.COMPACT).count() == 1


def button(html: str, action: str) -> str:
    start = html.index(f'data-action="{action}"')
    return html[html.rindex("<button", 0, start) : html.index("</button>", start)]


def test_compact_now_and_verify_now_are_disabled_together_and_say_why(client, alice, machine):
    client.force_login(alice)
    html = client.get(f"/machines/{machine.pk}/").content.decode()
    compact, verify = button(html, "compact"), button(html, "verify-now")
    assert " disabled" in compact and " disabled" in verify
    assert 'title="web-01 has no recovery point yet; there is nothing to compact."' in compact
    assert 'title="web-01 has no recovery point yet; there is nothing to verify."' in verify
    # A press from a page rendered earlier is refused with the same words, nothing started.
    answer = client.post(f"/jobs/machines/{machine.pk}/compact/", follow=True)
    assert "there is nothing to compact" in answer.content.decode()
    assert not Job.objects.filter(operation=Job.Operation.COMPACT).exists()

    with_point(machine)
    html = client.get(f"/machines/{machine.pk}/").content.decode()
    compact, verify = button(html, "compact"), button(html, "verify-now")
    assert " disabled" not in compact and " disabled" not in verify
    client.post(f"/jobs/machines/{machine.pk}/compact/")
    html = client.get(f"/machines/{machine.pk}/").content.decode()
    assert 'disabled title="A compaction of web-01 is already queued."' in button(html, "compact")


def test_a_reader_cannot_compact_and_an_outsider_does_not_see_the_machine(
    client, member, charlie, machine
):
    client.force_login(member(Role.READER))
    assert 'data-action="compact"' not in client.get(f"/machines/{machine.pk}/").content.decode()
    assert client.post(f"/jobs/machines/{machine.pk}/compact/").status_code == 403
    assert ActivityEntry.objects.filter(operation="compact.now", outcome="refused").exists()
    client.force_login(charlie)
    assert client.post(f"/jobs/machines/{machine.pk}/compact/").status_code == 404
    assert client.get(f"/jobs/machines/{machine.pk}/compact/").status_code == 405
    assert not Job.objects.filter(operation=Job.Operation.COMPACT).exists()


def test_the_daily_run_compacts_each_online_machine_after_retention(vault, sent):
    online = with_point(make_machine(vault, name="web-01"))
    offline = with_point(make_machine(vault, name="db-01", online=False))
    tasks.retention_apply_all()
    jobs = Job.objects.filter(operation=Job.Operation.COMPACT)
    assert [job.machine for job in jobs] == [online]
    assert not jobs.filter(machine=offline).exists()
    assert jobs[0].trigger == Job.Trigger.SCHEDULED
    tasks.retention_apply_all()  # one at a time
    assert jobs.count() == 1


def test_a_compaction_whose_agent_went_quiet_says_nothing_was_deleted(machine, settings):
    job = services.compact_start(machine=with_point(machine))
    services.job_mark_started(job=job)
    later = timezone.now() + timedelta(seconds=settings.HAVEN_JOB_STALL_SECONDS + 5)
    services.jobs_sweep(now=later)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "Nothing was deleted" in job.error and "next Compact job" in job.error
