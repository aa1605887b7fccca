"""A Backup Operator (or a script holding their session) pressing Compact now, Verify now or
Run restore drill in two tabs at the same moment, to stack jobs on a machine's agent: each
start looks for the one on its way and makes its own under the machine's fence, so the
second press is shown the first (or refused in words), never a second job and never a 500.
A Reader's and an outsider's presses make nothing."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from jobs.models import Job
from portal.models import Role
from tests.jobs import conftest as jobs_conftest
from tests.jobs import test_one_job_at_a_time as together
from tests.jobs.test_compact_start import with_point

pytestmark = pytest.mark.django_db(transaction=True)
# The jobs tests' environment (a machine with its storage, agent tasks recorded) and the
# fixture that counts the starts reaching the fence.
_jobs_env, pushes, sent = jobs_conftest._jobs_env, jobs_conftest.pushes, jobs_conftest.sent
at_the_fence = together.at_the_fence


@pytest.fixture
def machine(vault):
    return jobs_conftest.make_machine(vault)


BUTTONS = [
    ("compact_now", Job.Operation.COMPACT),
    ("verify_now", Job.Operation.VERIFY),
    ("drill_run", Job.Operation.DRILL),
]


@pytest.mark.parametrize(("action", "operation"), BUTTONS, ids=[a for a, _ in BUTTONS])
def test_two_presses_at_once_by_an_operator_queue_one_job(
    machine, member, at_the_fence, action, operation
):
    with_point(machine)
    operator = member(Role.BACKUP_OPERATOR)
    clients = [Client(), Client()]
    for client in clients:
        client.force_login(operator)
    url = reverse(f"jobs:{action}", args=[machine.pk])
    presses = [lambda client=client: client.post(url) for client in clients]
    answers = together._together(at_the_fence, presses, machine)
    assert [a.status_code for a in answers] == [302, 302], answers
    assert Job.objects.filter(operation=operation).count() == 1


@pytest.mark.parametrize(("action", "operation"), BUTTONS, ids=[a for a, _ in BUTTONS])
def test_a_readers_or_outsiders_presses_make_nothing(
    client, machine, member, charlie, action, operation
):
    with_point(machine)
    url = reverse(f"jobs:{action}", args=[machine.pk])
    client.force_login(member(Role.READER))
    assert [client.post(url).status_code for _ in range(2)] == [403, 403]
    client.force_login(charlie)
    assert client.post(url).status_code == 404
    assert not Job.objects.filter(operation=operation).exists()
