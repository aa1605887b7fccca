"""The hot path's token check (``agents.live_auth``): a batch of tokens answered as
``agents.api_auth`` answers each, their ``last_used_at`` kept to the minute, on PostgreSQL
in one statement; answers held in memory go when the database's token counter moves,
whoever changed a token or its machine. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents import live_auth
from agents.api_auth import TOKEN_PREFIX, machine_token_issue, machine_tokens_revoke, token_hash
from agents.live_auth import LiveMachine, live_machine, load_machines, read_generation
from agents.models import Machine, MachineToken
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

    generation = read_generation()
    assert answers == [
        (LiveMachine(machine_id=machines[0].pk, vault_id=vault.pk), generation),
        (LiveMachine(machine_id=machines[1].pk, vault_id=vault.pk), generation),
        None,
        None,
    ]
    # The read and the write are one statement where the database can say so.
    assert len(queries) == (1 if connection.vendor == "postgresql" else 2)
    used = dict(MachineToken.objects.values_list("token_hash", "last_used_at"))
    assert timezone.now() - used[digests[0]] < timedelta(seconds=30)
    assert used[digests[1]] == recently  # used within the minute: not written again
    assert used[digests[2]] is None


def run(coroutine):
    """``asyncio.run`` on a thread of its own (a browser test may leave a loop on this one)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.mark.parametrize("change", ["revoked", "unregistered", "moved", "deleted"])
def test_a_change_made_elsewhere_is_seen_within_the_counter_bound(
    vault, resource_group, change, monkeypatch
):
    """Made by another process with a plain statement (nothing tells this one): the answer
    held here goes once the counter is read again, ``GENERATION_FRESH_SECONDS`` at most."""
    monkeypatch.setattr(live_auth, "GENERATION_FRESH_SECONDS", 0.3)
    monkeypatch.setattr(live_auth, "GENERATION_POLL_SECONDS", 0.05)
    live_auth.forget_tokens()
    machine = builders.make_machine(vault=vault, name="web-07")
    other = builders.make_vault(resource_group=resource_group, name="vault-two")
    header = f"Bearer {machine_token_issue(machine=machine)}"

    def act():
        rows = Machine.objects.filter(pk=machine.pk)
        if change == "revoked":
            MachineToken.objects.filter(machine=machine).update(revoked_at=timezone.now())
        elif change == "unregistered":
            rows.update(unregistered_at=timezone.now())
        elif change == "moved":
            rows.update(vault=other)
        else:
            rows.delete()

    async def scenario():
        before = await live_machine(header)
        held = await live_machine(header)  # answered from memory
        await asyncio.to_thread(act)
        await asyncio.sleep(0.4)
        return before, held, await live_machine(header)

    before, held, after = run(scenario())
    assert before == held == LiveMachine(machine_id=machine.pk, vault_id=vault.pk)
    if change == "moved":
        assert after == LiveMachine(machine_id=machine.pk, vault_id=other.pk)
    else:
        assert after is None


def test_a_heartbeat_a_minute_finds_its_token_held_and_its_use_noted(vault, monkeypatch):
    """Past the short bound (``TOKEN_CACHE_SECONDS``) a live token is still answered from
    memory while the counter holds: no query of its own. Its ``last_used_at`` is still
    written once it is due."""
    monkeypatch.setattr(live_auth, "TOKEN_CACHE_SECONDS", 0.1)
    monkeypatch.setattr(live_auth, "GENERATION_POLL_SECONDS", 0.05)
    monkeypatch.setattr(live_auth, "NOTE_USED_SECONDS", 0.05)
    live_auth.forget_tokens()
    machine = builders.make_machine(vault=vault, name="web-08")
    token = machine_token_issue(machine=machine)
    asked: list[list[str]] = []

    def counted(digests):
        asked.append(digests)
        return load_machines(digests)

    monkeypatch.setattr(
        live_auth,
        "_load",
        live_auth.LoopBatches(live_auth.db_in_executor(counted), live_auth.TOKEN_BATCH_MAX),
    )
    long_ago = timezone.now() - timedelta(minutes=5)

    async def scenario():
        answers = [await live_machine(f"Bearer {token}")]
        await asyncio.to_thread(
            lambda: MachineToken.objects.filter(machine=machine).update(last_used_at=long_ago)
        )
        for _ in range(3):
            await asyncio.sleep(0.25)
            answers.append(await live_machine(f"Bearer {token}"))
        live_auth._tokens.entries[token_hash(token)].used_at = 0.0  # its minute is over
        answers.append(await live_machine(f"Bearer {token}"))
        await asyncio.sleep(0.5)  # the last use written in the background
        return answers

    answers = run(scenario())
    assert answers == [LiveMachine(machine_id=machine.pk, vault_id=vault.pk)] * 5
    assert len(asked) <= 1  # the first call's (none if the load of every token came first)
    used = MachineToken.objects.get(machine=machine).last_used_at
    assert timezone.now() - used < timedelta(seconds=30)


def test_a_process_loads_every_live_token_at_its_first_call(vault, monkeypatch):
    """A fleet's burst of starts after a restart finds its tokens loaded by the first
    request (one query for all), revoked ones left out."""
    live_auth.forget_tokens()
    machines = [builders.make_machine(vault=vault, name=f"web-{n:02}") for n in range(3)]
    first, second, revoked = (machine_token_issue(machine=m) for m in machines)
    machine_tokens_revoke(machine=machines[2])
    asked: list[list[str]] = []

    def counted(digests):
        asked.append(digests)
        return load_machines(digests)

    monkeypatch.setattr(
        live_auth,
        "_load",
        live_auth.LoopBatches(live_auth.db_in_executor(counted), live_auth.TOKEN_BATCH_MAX),
    )

    async def scenario():
        answers = [await live_machine(f"Bearer {first}")]
        loop = asyncio.get_running_loop()
        # The load of every token (this loop's: an earlier test's never ends).
        while any(task.get_loop() is loop for task in live_auth._background):
            await asyncio.sleep(0.05)
        answers.append(await live_machine(f"Bearer {second}"))
        answers.append(await live_machine(f"Bearer {revoked}"))
        return answers

    answers = run(scenario())
    assert answers == [
        LiveMachine(machine_id=machines[0].pk, vault_id=vault.pk),
        LiveMachine(machine_id=machines[1].pk, vault_id=vault.pk),
        None,
    ]
    assert token_hash(second) not in [d for batch in asked for d in batch]


# A process's first response waits for its warm-up (the token load); on a busy 2-core
# machine that passed channels' default of 1 s (seen once, a TimeoutError).
FIRST_RESPONSE_SECONDS = 10


def test_a_portal_process_loads_the_tokens_at_its_first_request_of_any_kind(vault):
    """A page or a socket first: the tokens are there before the first agent asks."""
    from channels.testing import HttpCommunicator

    from portal import realtime
    from portal.asgi import application

    live_auth.forget_tokens()
    machine = builders.make_machine(vault=vault, name="web-09")
    token = machine_token_issue(machine=machine)
    realtime.serving_pid = None  # as in a process that has served nothing yet

    async def scenario():
        await HttpCommunicator(
            application, "GET", "/signin/", headers=[(b"host", b"127.0.0.1")]
        ).get_response(timeout=FIRST_RESPONSE_SECONDS)
        loop = asyncio.get_running_loop()
        for _ in range(100):
            if not any(task.get_loop() is loop for task in live_auth._background):
                break
            await asyncio.sleep(0.05)

    run(scenario())
    assert token_hash(token) in live_auth._tokens.entries


def test_a_token_held_is_let_in_at_once_and_one_not_held_waits_for_its_check(vault):
    """daphne reads the body of an agent request whose token the cache holds in the same
    step as its headers (``portal.gate.let_in_now``); any other waits for the check."""
    from portal.gate import RULES, let_in_now

    live_auth.forget_tokens()
    machine = builders.make_machine(vault=vault, name="web-10")
    held, other = machine_token_issue(machine=machine), f"{TOKEN_PREFIX}not-held"
    agent_rule = next(rule for rule in RULES if rule.prefix == "/api/agent/")
    storage_rule = next(rule for rule in RULES if rule.prefix == "/storage/")

    def headers(token: str, length: int = 100) -> dict[str, str]:
        return {"authorization": f"Bearer {token}", "content-length": str(length)}

    async def scenario():
        await live_machine(f"Bearer {held}")  # a first request: now held
        for _ in range(40):  # and the token counter read, in the background
            if live_auth._generation.fresh(time.monotonic()):
                break
            await asyncio.sleep(0.05)
        return [
            let_in_now(agent_rule, headers(held)),
            let_in_now(agent_rule, headers(other)),
            let_in_now(agent_rule, headers(held, agent_rule.limit + 1)),
            let_in_now(storage_rule, headers(held)),
        ]

    assert run(scenario()) == [True, False, False, False]
