"""The hot path's token check (``agents.live_auth.load_machines``): a batch of tokens
answered as ``agents.api_auth`` answers each, their ``last_used_at`` kept to the minute;
on PostgreSQL in one statement. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.api_auth import machine_token_issue, machine_tokens_revoke, token_hash
from agents.live_auth import LiveMachine, load_machines
from agents.models import MachineToken
from tests.support import builders

pytestmark = [pytest.mark.servers, pytest.mark.django_db(transaction=True)]


def test_a_batch_of_tokens_is_answered_and_their_use_noted_to_the_minute(vault):
    machines = [builders.make_machine(vault=vault, name=f"web-{n:02}") for n in range(3)]
    unused, recent, revoked = (machine_token_issue(machine=machine) for machine in machines)
    recently = timezone.now() - timedelta(seconds=5)
    MachineToken.objects.filter(token_hash=token_hash(recent)).update(last_used_at=recently)
    machine_tokens_revoke(machine=machines[2])
    digests = [token_hash(t) for t in (unused, recent, revoked, "haven_mt_nobody")]

    with CaptureQueriesContext(connection) as queries:
        answers = load_machines(digests)

    assert answers == [
        LiveMachine(machine_id=machines[0].pk, vault_id=vault.pk),
        LiveMachine(machine_id=machines[1].pk, vault_id=vault.pk),
        None,
        None,
    ]
    # The read and the write are one statement where the database can say so.
    assert len(queries) == (1 if connection.vendor == "postgresql" else 2)
    used = dict(MachineToken.objects.values_list("token_hash", "last_used_at"))
    assert timezone.now() - used[digests[0]] < timedelta(seconds=30)
    assert used[digests[1]] == recently  # used within the minute: not written again
    assert used[digests[2]] is None
