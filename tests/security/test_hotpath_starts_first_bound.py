"""A compromised machine and the event loop's "starts first" wait (jobs/progress_api.py,
``STARTS_FIRST_SECONDS``): starts it keeps in flight hold up another machine's first report
no longer than that bound. Real PostgreSQL and Redis: the hot path exists only with Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from django.conf import settings

from jobs import progress_api, services
from jobs.models import Job
from tests.jobs.conftest import make_machine, spec, token_for
from tests.jobs.test_live_progress import report
from tests.jobs.test_progress_hotpath import Portal, run

pytestmark = [
    pytest.mark.servers,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="the hot path needs Redis"),
]

HELD = 3.0  # how long the attacker's starts stay in flight


def test_starts_held_in_flight_delay_another_machine_s_first_report_at_most_the_bound(
    vault, alice, monkeypatch
):
    victim, attacker = make_machine(vault, "victim"), make_machine(vault, "attacker")
    for machine in (victim, attacker):
        services.policy_save(machine=machine, spec=spec(), user=alice)
    job = services.backup_start(machine=victim)
    services.job_mark_started(job=job, publish=False)
    own = services.backup_start(machine=attacker)
    real_batch = progress_api._start_batch_async

    async def held(pairs, now):  # the attacker's starts never leave the batch in time
        await asyncio.sleep(HELD)
        return await real_batch(pairs, now)

    monkeypatch.setattr(progress_api, "_start_batch_async", held)
    portal = Portal()
    progress_api.forget_jobs()

    async def scenario():
        starts = asyncio.ensure_future(
            portal.post(f"/api/agent/jobs/{own.pk}/start/", token_for(attacker), b"{}")
        )
        await asyncio.sleep(0.05)  # the start is in its batch
        began = time.monotonic()
        answer = await portal.post(
            f"/api/agent/jobs/{job.pk}/progress/", token_for(victim), report(3)
        )
        waited = time.monotonic() - began
        held_still = not starts.done()
        await starts
        return answer, waited, held_still

    (status, body), waited, held_still = run(scenario())
    assert status == 200 and body == {"cancel": False}
    assert held_still  # answered while the attacker's starts were still in flight
    assert waited < progress_api.STARTS_FIRST_SECONDS + 1.0 < HELD
    assert Job.objects.get(pk=job.pk).progress["files_done"] == 3
