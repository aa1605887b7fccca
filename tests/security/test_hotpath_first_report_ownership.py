"""A compromised machine and the event loop's batch of first reports (jobs/progress_api.py,
``record_reshaped``): its token cannot record, render or push a report for another machine's
job, however the batch gathers them. Real PostgreSQL and Redis: the hot path exists only
with Redis."""

from __future__ import annotations

import pytest
from django.conf import settings

from jobs import progress_api, services
from jobs.models import Job
from tests.jobs.conftest import make_machine, token_for
from tests.jobs.test_live_progress import report
from tests.jobs.test_progress_hotpath import Portal, run

pytestmark = [
    pytest.mark.servers,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="the hot path needs Redis"),
]


def test_a_machine_cannot_record_another_machine_s_first_report(vault, alice):
    from tests.jobs.conftest import spec

    victim, attacker = make_machine(vault, "victim"), make_machine(vault, "attacker")
    services.policy_save(machine=victim, spec=spec(), user=alice)
    job = services.backup_start(machine=victim)
    services.job_mark_started(job=job, publish=False)
    portal = Portal()
    path = f"/api/agent/jobs/{job.pk}/progress/"

    progress_api.forget_jobs()
    status, _ = run(portal.post(path, token_for(attacker), report(999, phase="finalizing")))

    assert status == 404  # the view's answer: not a job of this machine
    assert Job.objects.get(pk=job.pk).progress in (None, {})
    # And the batch itself refuses it, alone or beside the victim's own report.
    answers, pushes = progress_api.record_reshaped(
        [
            (str(job.pk), attacker.pk, report(5), {f"vault.{vault.pk}"}),
            (str(job.pk), victim.pk, report(6), {f"vault.{vault.pk}"}),
        ]
    )
    assert answers == [None, False] and len(pushes) == 1
    assert Job.objects.get(pk=job.pk).progress["files_done"] == 6
