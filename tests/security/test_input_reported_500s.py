"""Bad input is a 4xx, never a 500: the six requests issue 12 found answering 500.

Each test sends the request as the person (or machine) who could send it and asserts the
status a browser or an agent would see, and that nothing changed.
"""

from __future__ import annotations

import json

import pytest

from agents.api_auth import machine_token_issue
from jobs import policy_rules, services
from jobs.models import BackupPolicy, Job, RecoveryPoint

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


@pytest.fixture
def policy(machine, alice):
    spec = policy_rules.default_spec()
    spec["items"] = ["/srv/data"]
    return services.policy_save(machine=machine, spec=spec, user=alice)


def _signed_in(client, user):
    client.force_login(user)
    return client


def _agent_post(client, machine, path, body):
    token = machine_token_issue(machine=machine)
    return client.post(
        path,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def _policy_form(**changes):
    form = {
        "items": "/srv/data",
        "frequency": "weekly",
        "times": ["21:00"],
        "weekdays": ["²"],
        "daily_enabled": "on",
        "daily_days": "30",
        "initial_backup": "online",
    }
    form.update(changes)
    return form


def test_unicode_digit_weekday_in_policy_preview_shows_the_problem_not_a_500(
    client, machine, member
):
    """The preview is an htmx fragment whose content is the problems (htmx swaps only a
    2xx), so the answer is 200 with the problem in it; it used to be a 500."""
    reader = member("reader")
    answer = _signed_in(client, reader).post(
        f"/jobs/machines/{machine.pk}/policy/preview/", _policy_form()
    )
    assert answer.status_code == 200
    assert "Fix the 3 problems above" in answer.content.decode()


def test_unicode_digit_weekday_in_policy_editor_is_a_400_and_saves_nothing(
    client, alice, machine, policy
):
    answer = _signed_in(client, alice).post(f"/jobs/machines/{machine.pk}/policy/", _policy_form())
    assert answer.status_code == 400
    assert "not a valid day of the week" in answer.content.decode()
    assert BackupPolicy.objects.get(pk=policy.pk).version == policy.version


@pytest.mark.parametrize("digit", ["١", "٣", "3"])
def test_only_ascii_digits_count_as_a_weekday(digit):
    """``int('١')`` is 1 in Python; the editor takes the digits its own form sends."""
    spec, problems = policy_rules.parse_form(_policy_form(weekdays=[digit]))
    if digit == "3":
        assert not problems.get("weekdays") and spec["weekdays"] == [3]
    else:
        assert problems["weekdays"][0] == f"{digit!r} is not a valid day of the week."
        assert spec["weekdays"] == []


def test_a_junk_vault_filter_on_the_machines_page_is_a_404(client, alice, vault):
    assert _signed_in(client, alice).get("/machines/?vault=junk").status_code == 404


def test_a_junk_recovery_target_is_a_404(client, alice, machine):
    answer = _signed_in(client, alice).get(f"/recover/?source={machine.pk}&target=junk")
    assert answer.status_code == 404


def test_an_unknown_vault_wizard_step_is_a_400_that_shows_the_wizard(client, alice, subscription):
    answer = _signed_in(client, alice).post(
        "/vaults/create/", {"step": "x", "action": "next", "subscription": str(subscription.pk)}
    )
    assert answer.status_code == 400
    assert "Basics" in answer.content.decode()


def test_a_non_numeric_applied_policy_version_is_a_json_400(client, machine, policy):
    answer = _agent_post(client, machine, "/api/agent/jobs/policy/applied/", {"version": "abc"})
    assert answer.status_code == 400 and answer.json()["error"] == "bad_request"
    assert "version" in answer.json()["message"]
    policy.refresh_from_db()
    assert policy.applied_version is None and policy.applied_at is None


def test_a_string_in_a_results_file_count_is_a_json_400(client, machine, policy):
    job = services.backup_start(machine=machine)
    answer = _agent_post(
        client,
        machine,
        f"/api/agent/jobs/{job.pk}/result/",
        {
            "status": "completed",
            "stats": {"logical_bytes": 10, "added_bytes": 10, "files": "many"},
            "recovery_point_id": "ef" * 16,
            "manifest_blob": "snapshots/" + "ef" * 16,
            "pack_ids": ["aa" * 16],
        },
    )
    assert answer.status_code == 400 and answer.json()["error"] == "bad_request"
    assert "stats" in answer.json()["message"]
    job.refresh_from_db()
    assert job.status != Job.Status.COMPLETED
    assert not RecoveryPoint.objects.filter(job=job).exists()
