"""A compromised machine sends a forged verify report: it must not mark another machine's
recovery points Damaged, nor get absurd counts or shapes recorded. Each attack posts to the
real agent API with the machine's own token and checks what the victim would notice."""

from __future__ import annotations

import json

import pytest

from jobs import services
from jobs.models import Alert, Job, RecoveryPoint
from tests.jobs import conftest as jobs_conftest
from tests.jobs.conftest import make_machine, spec, stored_point, token_for

pytestmark = pytest.mark.django_db
_jobs_env, pushes, sent = jobs_conftest._jobs_env, jobs_conftest.pushes, jobs_conftest.sent

VICTIM_POINT = "a0" * 16
OWN_POINT = "c0" * 16
PACK = "b1" * 16
MANY_FILE = {"recovery_point": OWN_POINT, "path": "p"}


def _point(machine, snapshot):
    stored_point(machine, snapshot, [PACK])
    services.policy_save(machine=machine, spec=spec())
    job = services.backup_start(machine=machine)
    services.job_finish(job=job, status="completed", snapshot_id=snapshot, pack_ids=[PACK])
    return RecoveryPoint.objects.get(machine=machine, snapshot_id=snapshot)


@pytest.fixture
def victim_point(vault):
    return _point(make_machine(vault, "web-01"), VICTIM_POINT)


@pytest.fixture
def attacker(vault):
    """db-01 with a point of its own and a verify job running."""
    machine = make_machine(vault, "db-01")
    _point(machine, OWN_POINT)
    job = services.verify_start(machine=machine)
    services.job_mark_started(job=job)
    return machine, job


def post(client, machine, job, **result):
    body = {"status": "failed", "stats": {"packs_checked": 1, "packs_total": 1}, **result}
    return client.post(
        f"/api/agent/jobs/{job.pk}/result/",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token_for(machine)}",
    )


def damage(*points, files=None):
    entry = {"pack": PACK, "reason": "chunk does not authenticate"}
    return [{**entry, "recovery_points": list(points), "files": files or []}]


def test_a_report_naming_another_machines_point_marks_nothing(client, victim_point, attacker):
    machine, job = attacker
    answer = post(client, machine, job, damage=damage(VICTIM_POINT, OWN_POINT))
    assert answer.status_code == 422
    assert "not this machine's" in answer.json()["message"]
    victim_point.refresh_from_db()
    assert victim_point.verify_damaged_at is None
    own = RecoveryPoint.objects.get(snapshot_id=OWN_POINT)
    assert own.verify_damaged_at is None  # the whole report is refused, not half of it
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "refused the verify report" in job.error
    assert not Alert.objects.filter(kind=Alert.Kind.VERIFY_DAMAGE).exists()


def test_a_foreign_point_hidden_in_the_file_list_is_refused_too(client, victim_point, attacker):
    machine, job = attacker
    files = [{"recovery_point": VICTIM_POINT, "path": "/etc/passwd"}]
    answer = post(client, machine, job, damage=damage(OWN_POINT, files=files))
    assert answer.status_code == 422
    victim_point.refresh_from_db()
    assert victim_point.verify_damaged_at is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"damage": [{"pack": PACK, "reason": "x"}] * 201}, "at most 200"),
        ({"damage": damage(OWN_POINT, files=[MANY_FILE] * 51)}, "at most 50"),
        ({"damage": [{"pack": "../../etc", "reason": "x"}]}, "hex id"),
        ({"damage": [{"pack": PACK, "reason": "x" * 501}]}, "at most 500"),
        ({"damage": "everything"}, "damage must be a list"),
        ({"stats": {"packs_checked": 10**6, "packs_total": 1}}, "cannot be"),
        ({"stats": {"bytes_checked": -1}}, "whole number"),
    ],
)
def test_absurd_reports_are_refused_with_a_4xx(client, attacker, change, words):
    machine, job = attacker
    answer = post(client, machine, job, **change)
    assert answer.status_code == 400, answer.content
    assert words in answer.json()["message"]
    assert not RecoveryPoint.objects.filter(verify_damaged_at__isnull=False).exists()


def test_a_backup_result_cannot_carry_damage(client, vault, victim_point):
    machine = victim_point.machine
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    answer = post(client, machine, job, status="completed", damage=damage(VICTIM_POINT))
    assert answer.status_code == 400
    victim_point.refresh_from_db()
    assert victim_point.verify_damaged_at is None
