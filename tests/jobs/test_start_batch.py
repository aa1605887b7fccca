"""A fleet's burst of starts committed together (``jobs.progress_api.start_batch``): one
statement for the whole batch, each start refused as the view refuses it alone. On SQLite
and on PostgreSQL (where the statement locks the machines' and the jobs' rows); the hot
path that calls it is tested in test_progress_hotpath.py."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import services
from jobs.models import Job
from jobs.progress_api import start_batch
from tests.jobs.conftest import make_machine, spec

pytestmark = [pytest.mark.servers, pytest.mark.django_db(transaction=True)]


def test_a_batch_of_starts_is_one_statement_and_leaves_what_the_view_would_refuse(vault, alice):
    machines = [make_machine(vault, f"web-{n:02}") for n in range(6)]
    for machine in machines:
        services.policy_save(machine=machine, spec=spec(), user=alice)
    jobs = [services.backup_start(machine=machine) for machine in machines]
    Job.objects.filter(pk=jobs[1].pk).update(status=Job.Status.WAITING)
    Job.objects.filter(pk=jobs[2].pk).update(cancel_requested_at=timezone.now())
    Job.objects.filter(pk=jobs[3].pk).update(operation=Job.Operation.COMPACT)
    services.job_mark_started(job=jobs[4], publish=False)  # running already
    before = {job.pk: Job.objects.get(pk=job.pk).started_at for job in jobs}
    pairs = [(str(job.pk), machine.pk) for job, machine in zip(jobs, machines, strict=True)]
    pairs[5] = (str(jobs[5].pk), machines[0].pk)  # machine 0 starting machine 5's job
    now = timezone.now()

    with CaptureQueriesContext(connection) as queries:
        started = start_batch(pairs, now)

    assert len(queries) == 1
    # As the cache of running jobs keeps them (their first reports need not read them).
    assert {
        job_id: (job.machine_id, job.vault_id, job.operation, job.cancel, job.progress)
        for job_id, job in started.items()
    } == {str(jobs[n].pk): (machines[n].pk, vault.pk, "backup", n == 2, {}) for n in range(3)}
    assert all(job.started_at == job.row_written_at == now for job in started.values())
    rows = [Job.objects.get(pk=job.pk) for job in jobs]
    assert all(
        row.status == Job.Status.RUNNING and row.started_at == row.last_report_at == now
        for row in rows[:3]
    )
    # The compaction (left to job_mark_started), the running job and the other machine's
    # job are as they were.
    assert [row.status for row in rows[3:]] == [
        Job.Status.QUEUED,
        Job.Status.RUNNING,
        Job.Status.QUEUED,
    ]
    assert [row.started_at for row in rows[3:]] == [before[job.pk] for job in jobs[3:]]
