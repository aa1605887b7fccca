"""A job's result is never lost because the portal was away, and the portal takes it once.

Real backups: the agent's backup job (``run_backup_job``, the real engine) writes to the
machine's real container (Azurite in the servers pass) and reports to the real agent API
through Django's test client; the portal "goes away" at the end of the backup (every call
raises ``PortalUnreachable``, as the agent's client does when the portal is down). Time
travels: the sweep runs and collection is tried an hour later, and the result arrives then.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from agents.runtime import engine
from agents.runtime.jobs.backup import run_backup_job
from agents.runtime.jobs.outbox import outbox_for_cache
from agents.runtime.portal_api import PortalUnreachable
from jobs import services
from jobs.models import Job, RecoveryPoint
from tests.jobs import conftest as jobs_conftest
from tests.jobs.conftest import make_machine, spec, token_for
from tests.security.test_gc_fence import (
    FAST_KDF,
    PASSPHRASE,
    ApiPortal,
    MiB,
    packs_in,
    verify_every_point,
    write_random,
)
from vaults import storage

pytestmark = pytest.mark.django_db(transaction=True)
_jobs_env, pushes, sent = jobs_conftest._jobs_env, jobs_conftest.pushes, jobs_conftest.sent


class AwayAtTheEnd(ApiPortal):
    """The real agent API, until the backup's result: from then on the portal is away
    (connection refused) until ``back()``."""

    def __init__(self, client, machine):
        super().__init__(client, machine)
        self.away = False
        self.refused_calls = 0

    def back(self):
        self.away = False

    def _gone(self, path):
        if path.endswith("/result/") and self.away is False and self.refused_calls == 0:
            self.away = True
        if self.away:
            self.refused_calls += 1
            raise PortalUnreachable("cannot reach the portal: connection refused")

    def get(self, path):
        self._gone(path)
        return super().get(path)

    def post(self, path, payload=None):
        self._gone(path)
        return super().post(path, payload)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for i in range(3):
        write_random(root, f"f{i}.bin", MiB, seed=i)
    return root


@pytest.fixture
def machine(vault, alice, data):
    machine = make_machine(vault)
    services.policy_save(machine=machine, spec=spec(items=[str(data)]), user=alice)
    with storage.primary_account().store(machine.container) as store:
        engine.Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
    return machine


def _backup(portal, machine, job, tmp_path, **kwargs):
    account = storage.primary_account()
    return run_backup_job(
        str(job.pk),
        portal=portal,
        open_store=lambda: account.store(machine.container),
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "agent-cache",
        sleep=lambda s: None,
        pack_size=MiB,
        **kwargs,
    )


def test_a_backup_result_posted_while_the_portal_is_away_is_recorded_when_it_returns(
    client, machine, tmp_path, settings, monkeypatch
):
    job = services.backup_start(machine=machine)
    portal = AwayAtTheEnd(client, machine)
    posted = _backup(portal, machine, job, tmp_path)
    assert posted["status"] == "completed" and posted["pack_ids"]
    assert portal.refused_calls >= 2, "the agent tried while the portal was away"
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING  # the portal never heard the end

    # The portal is away for an hour: its sweep fails the silent job, collection runs.
    start = timezone.now()
    services.jobs_sweep(now=start + timedelta(seconds=settings.HAVEN_JOB_STALL_SECONDS + 1))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "stopped reporting" in job.error
    an_hour_later = start + timedelta(hours=1)
    assert services.packs_collect(machine=machine, now=an_hour_later) == []
    assert set(posted["pack_ids"]) <= packs_in(machine)

    # The portal is back; the worker (a new process: a new Outbox) posts what it kept.
    monkeypatch.setattr(timezone, "now", lambda: an_hour_later)
    portal.back()
    kept = outbox_for_cache(tmp_path / "agent-cache")
    assert [e.job_id for e in kept.pending()] == [str(job.pk)]
    assert kept.flush(portal) == 1 and kept.pending() == []
    job.refresh_from_db()
    assert job.status == Job.Status.COMPLETED
    assert "arrived late" in job.error and "recorded" in job.error
    point = RecoveryPoint.objects.get(job=job)
    assert point.snapshot_id == posted["recovery_point_id"]
    assert sorted(point.pack_ids) == sorted(posted["pack_ids"])
    verify_every_point(machine)


def _post(client, machine, job, body):
    return client.post(
        f"/api/agent/jobs/{job.pk}/result/",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_for(machine)}",
    )


def test_the_same_result_twice_gets_the_same_answer(client, machine, tmp_path):
    job = services.backup_start(machine=machine)
    portal = ApiPortal(client, machine)
    posted = _backup(portal, machine, job, tmp_path)
    assert portal.result_answer == 200
    # The answer was lost; the agent posts the same result (same id) again, twice.
    first = _post(client, machine, job, posted)
    second = _post(client, machine, job, posted)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == {"status": "completed"}
    assert RecoveryPoint.objects.filter(job=job).count() == 1

    # Another result for the finished job is refused and changes nothing.
    other = {**posted, "status": "failed", "message": "boom", "result_id": str(uuid.uuid4())}
    refused = _post(client, machine, job, other)
    assert refused.status_code == 409 and refused.json()["error"] == "result_conflict"
    job.refresh_from_db()
    assert job.status == Job.Status.COMPLETED and str(job.result_id) == posted["result_id"]
    assert RecoveryPoint.objects.filter(job=job).count() == 1

    bad = _post(client, machine, job, {**posted, "result_id": "not-a-uuid"})
    assert bad.status_code == 400 and "result_id" in bad.json()["message"]


def test_a_failure_after_the_sweep_keeps_the_portals_reason_and_answers_the_same(
    client, machine, settings
):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    services.jobs_sweep(
        now=timezone.now() + timedelta(seconds=settings.HAVEN_JOB_STALL_SECONDS + 1)
    )
    body = {"status": "failed", "message": "disk gone", "result_id": str(uuid.uuid4())}
    answers = [_post(client, machine, job, body) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json() == {"status": "failed"}
    job.refresh_from_db()
    assert "stopped reporting" in job.error and str(job.result_id) == body["result_id"]


def test_a_refused_point_posted_again_is_refused_again(client, machine):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    body = {
        "status": "completed",
        "recovery_point_id": "c0" * 16,  # no such manifest in the machine's container
        "manifest_blob": "snapshots/" + "c0" * 16,
        "result_id": str(uuid.uuid4()),
    }
    answers = [_post(client, machine, job, body) for _ in range(2)]
    assert [a.status_code for a in answers] == [409, 409]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["error"] == "point_refused"
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and not RecoveryPoint.objects.filter(job=job).exists()
