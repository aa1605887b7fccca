"""The agent API for jobs: each machine sees only its own jobs."""

from __future__ import annotations

import json

import pytest

from jobs import services
from jobs.models import Job, RecoveryPoint
from tests.jobs.conftest import make_machine, stored_point, token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(client, machine):
    token = token_for(machine)

    class Agent:
        def get(self, path):
            return client.get(f"/api/agent/jobs/{path}", HTTP_AUTHORIZATION=f"Bearer {token}")

        def post(self, path, body=None):
            return client.post(
                f"/api/agent/jobs/{path}",
                data=json.dumps(body or {}),
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {token}",
            )

    return Agent()


@pytest.fixture
def job(machine, policy):
    return services.backup_start(machine=machine)


def test_the_agent_fetches_its_job_with_the_policy(agent, job, policy):
    body = agent.get(f"{job.pk}/").json()
    assert body["operation"] == "backup" and body["cancel"] is False
    assert body["policy"]["spec"]["items"] == ["/srv/data"]
    assert body["policy"]["spec_hash"] == policy.spec_hash


def test_another_machines_job_is_not_found(agent, vault, policy):
    other = make_machine(vault, "db-01")
    services.policy_save(machine=other, spec=policy.spec())
    foreign = services.backup_start(machine=other)
    assert agent.get(f"{foreign.pk}/").status_code == 404
    assert agent.post(f"{foreign.pk}/progress/", {"phase": "x"}).status_code == 404


def test_no_token_no_access(client, job):
    assert client.get(f"/api/agent/jobs/{job.pk}/").status_code == 401


def test_start_progress_result_round_trip(agent, job, machine):
    stored_point(machine, "ef" * 16, ["aa" * 16])
    assert agent.post(f"{job.pk}/start/").json()["cancel"] is False
    answer = agent.post(
        f"{job.pk}/progress/", {"type": "progress", "phase": "backing_up", "files_done": 1}
    )
    assert answer.json() == {"cancel": False}
    result = agent.post(
        f"{job.pk}/result/",
        {
            "status": "completed",
            "warnings": [],
            "stats": {"logical_bytes": 10, "new_bytes": 10, "added_bytes": 20, "files": 1},
            "recovery_point_id": "ef" * 16,
            "manifest_blob": "snapshots/" + "ef" * 16,
            "pack_ids": ["aa" * 16],
        },
    )
    assert result.json() == {"status": "completed"}
    job.refresh_from_db()
    assert job.status == Job.Status.COMPLETED and job.bytes_transferred == 20
    assert RecoveryPoint.objects.get(job=job).pack_ids == ["aa" * 16]


def test_the_first_progress_report_is_pushed_once(
    agent, job, pushes, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        agent.post(f"{job.pk}/progress/", {"phase": "backing_up", "files_done": 3})
    groups = [group for group, _ in pushes]
    # The job's page, its vault's pages, and the Backup centers of its subscription (the
    # machine's last backup is now Running there).
    assert sorted(groups) == sorted(
        [f"job.{job.pk}", f"vault.{job.vault_id}", f"fleet.{job.vault.subscription_id}"]
    )
    # That one push shows the job running, with the progress.
    html = dict(pushes)[f"job.{job.pk}"]
    assert 'data-status="running"' in html and 'data-field="files">3<' in html
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and job.progress["files_done"] == 3


def test_the_progress_answer_carries_the_cancel(agent, job, alice):
    agent.post(f"{job.pk}/start/")
    services.job_cancel(job=Job.objects.get(pk=job.pk), user=alice)
    assert agent.post(f"{job.pk}/progress/", {"phase": "backing_up"}).json() == {"cancel": True}


def test_a_bad_result_is_refused_with_a_message(agent, job):
    response = agent.post(f"{job.pk}/result/", {"status": "great"})
    assert response.status_code == 400 and "status must be one of" in response.json()["message"]


def test_the_agent_reports_the_applied_policy(agent, policy):
    assert agent.get("policy/").json()["policy"]["version"] == 1
    agent.post("policy/applied/", {"version": 1, "spec_hash": policy.spec_hash})
    policy.refresh_from_db()
    assert not policy.drifted


def test_a_point_that_cannot_be_checked_is_answered_503_and_nothing_changes(
    agent, job, machine, monkeypatch
):
    """The machine's storage does not answer: the agent retries a 5xx, so the result must
    leave the job as it was."""
    from agents.runtime.blobstore import StorageUnavailable
    from vaults import storage

    class Unreachable:
        def store(self, name):
            raise StorageUnavailable("the storage account did not answer")

    agent.post(f"{job.pk}/start/")
    monkeypatch.setattr(storage, "primary_account", Unreachable)
    answer = agent.post(
        f"{job.pk}/result/",
        {"status": "completed", "recovery_point_id": "ef" * 16, "pack_ids": ["aa" * 16]},
    )
    assert answer.status_code == 503 and "did not answer" in answer.json()["message"]
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING and not RecoveryPoint.objects.exists()
