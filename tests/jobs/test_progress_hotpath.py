"""The agent API's hot path (portal.hotpath): a running job's steady progress and a machine's
heart-beat answered on the event loop, everything else handed to Django's view with its
body as it came, and the security bounds it keeps (a revoked token, a cancel). Real
PostgreSQL and Redis: the hot path exists only with Redis."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from agents.models import Machine, MachineToken
from jobs import progress_api, selectors, services
from jobs.models import Job
from portal import hotpath, realtime
from tests.jobs.conftest import make_machine, token_for
from tests.jobs.test_live_progress import report

pytestmark = [
    pytest.mark.servers,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not settings.REDIS_URL, reason="the hot path needs Redis"),
]


class Portal:
    """The ASGI app as daphne serves it, minus the gate: the hot path in front of Django,
    which records what reached it."""

    def __init__(self):
        self.django = get_asgi_application()
        self.reached_django: list[tuple[str, bytes]] = []
        self.app = hotpath.serve(self._django)

    async def _django(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.reached_django.append((scope["path"], body))
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body}

        await self.django(scope, replay, send)

    async def post(self, path: str, token: str, body) -> tuple[int, dict]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [
                (b"authorization", f"Bearer {token}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"host", b"127.0.0.1"),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
            "scheme": "http",
            "http_version": "1.1",
            "asgi": {"version": "3.0"},
        }
        chunks = [{"type": "http.request", "body": raw, "more_body": False}]
        answer: dict = {}

        async def receive():
            if chunks:
                return chunks.pop(0)
            await asyncio.sleep(3600)

        async def send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] = answer.get("body", b"") + message.get("body", b"")

        await self.app(scope, receive, send)
        return answer["status"], json.loads(answer["body"] or b"{}")


def run(coroutine):
    """``asyncio.run`` on a thread of its own: a browser test earlier in the session (the
    Playwright sync API) can leave an event loop running on this one."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture
def running(machine, policy):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job)
    services.job_record_progress(job=Job.objects.get(pk=job.pk), event=report(1))
    return Job.objects.get(pk=job.pk)


def test_a_steady_report_is_answered_on_the_loop_kept_where_pages_read_it_and_pushed(
    machine, running
):
    token = token_for(machine)
    portal = Portal()
    path = f"/api/agent/jobs/{running.pk}/progress/"

    async def scenario():
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(f"vault.{running.vault_id}", channel)
        answer = await portal.post(path, token, report(420))
        pushed = await asyncio.wait_for(layer.receive(channel), timeout=5)
        await layer.group_discard(f"vault.{running.vault_id}", channel)
        return answer, pushed

    (status, body), pushed = run(scenario())
    assert (status, body) == (200, {"cancel": False})
    assert portal.reached_django == []
    message = json.loads(pushed["html"])
    assert message["job_progress"] == str(running.pk)
    assert message["fields"]["files"] == "420 of 1,000"
    # Within the few seconds, the row is not written; pages read the cache, as after the view.
    row = Job.objects.get(pk=running.pk)
    assert row.progress["files_done"] == 1
    assert selectors.live_progress(row)["progress"]["files_done"] == 420


def test_what_the_loop_does_not_answer_goes_to_the_view_with_its_body(
    machine, running, vault, monkeypatch
):
    from portal.pools import PubSubChannelLayer

    token = token_for(machine)
    other = make_machine(vault, "web-02")
    other_token = token_for(other)
    portal = Portal()
    path = f"/api/agent/jobs/{running.pk}/progress/"
    cases = [
        (other_token, report(2), 404),  # another machine's job
        (token, b"{not json", 400),
        ("hvn_unknown", report(4), 401),
    ]

    async def scenario():
        from channels.layers import get_channel_layer

        answers = [await portal.post(path, who, body) for who, body, _ in cases]
        # A new phase is answered here too, recorded and re-rendered as the view does, for
        # the groups some socket hears (the job's page here, no vault page).
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(f"job.{running.pk}", channel)
        answers.append(await portal.post(path, token, report(3, phase="finalizing")))
        await asyncio.wait_for(layer.receive(channel), timeout=5)
        await layer.group_discard(f"job.{running.pk}", channel)
        return answers

    pushes: list[tuple[str, str]] = []
    send_many = PubSubChannelLayer.group_send_many

    async def recorded(layer, messages):
        pushes.extend((group, message["html"]) for group, message in messages)
        return await send_many(layer, messages)

    monkeypatch.setattr(PubSubChannelLayer, "group_send_many", recorded)
    answers = run(scenario())
    assert [status for status, _ in answers] == [status for _, _, status in cases] + [200]
    sent = [body if isinstance(body, bytes) else json.dumps(body).encode() for _, body, _ in cases]
    assert portal.reached_django == [(path, body) for body in sent]
    assert Job.objects.get(pk=running.pk).progress["phase"] == "finalizing"
    page = dict(pushes)[f"job.{running.pk}"]
    assert "Finalizing" in page and not page.startswith("{")  # the fragment, not numbers
    assert [group for group, _ in pushes] == [f"job.{running.pk}"]  # nobody on the vault's


def test_a_revoked_token_is_refused_at_once_here_and_within_the_counter_bound_elsewhere(
    machine, running, monkeypatch
):
    from agents import live_auth
    from agents.api_auth import machine_tokens_revoke

    token = token_for(machine)
    portal = Portal()
    path = f"/api/agent/jobs/{running.pk}/progress/"
    monkeypatch.setattr(live_auth, "GENERATION_FRESH_SECONDS", 0.5)
    monkeypatch.setattr(live_auth, "GENERATION_POLL_SECONDS", 0.1)

    async def scenario():
        first = await portal.post(path, token, report(5))
        # Revoked by another process (a plain UPDATE: nothing tells this one but the
        # database's token counter).
        await asyncio.to_thread(
            lambda: MachineToken.objects.filter(machine=machine).update(revoked_at=timezone.now())
        )
        await asyncio.sleep(0.6)
        after_bound = await portal.post(path, token, report(6))
        return first, after_bound

    first, after_bound = run(scenario())
    assert first[0] == 200
    assert after_bound[0] == 401

    # Revoked in this process: refused at the next request.
    token = token_for(machine)
    assert run(portal.post(path, token, report(8)))[0] == 200
    machine_tokens_revoke(machine=machine)
    assert run(portal.post(path, token, report(9)))[0] == 401


def test_a_live_token_is_answered_from_memory_past_the_short_bound_while_nothing_changes(
    machine, running, monkeypatch
):
    """A heart-beat a minute finds its token still held: no query for it, however long
    after the first (the counter alone is read, in the background)."""
    from agents import live_auth

    token = token_for(machine)
    portal = Portal()
    path = f"/api/agent/jobs/{running.pk}/progress/"
    monkeypatch.setattr(live_auth, "TOKEN_CACHE_SECONDS", 0.2)
    monkeypatch.setattr(live_auth, "GENERATION_POLL_SECONDS", 0.05)
    asked: list[list[str]] = []
    load = live_auth.load_machines

    def counted(digests):
        asked.append(digests)
        return load(digests)

    monkeypatch.setattr(live_auth, "load_machines", counted)
    monkeypatch.setattr(
        live_auth,
        "_load",
        live_auth.LoopBatches(live_auth.db_in_executor(counted), live_auth.TOKEN_BATCH_MAX),
    )

    async def scenario():
        answers = [await portal.post(path, token, report(5))]
        for seq in (6, 7, 8):
            await asyncio.sleep(0.3)  # past TOKEN_CACHE_SECONDS each time
            answers.append(await portal.post(path, token, report(seq)))
        return answers

    answers = run(scenario())
    assert [status for status, _ in answers] == [200, 200, 200, 200]
    assert len(asked) <= 1  # the first (or none: every live token loaded at the first call)


def test_a_cancel_reaches_the_agent_with_the_next_row_write(machine, running, monkeypatch):
    token = token_for(machine)
    portal = Portal()
    path = f"/api/agent/jobs/{running.pk}/progress/"
    assert run(portal.post(path, token, report(10))) == (200, {"cancel": False})
    Job.objects.filter(pk=running.pk).update(cancel_requested_at=timezone.now())
    monkeypatch.setattr(progress_api, "PROGRESS_WRITE_SECONDS", 0)  # the write is due
    assert run(portal.post(path, token, report(11))) == (200, {"cancel": True})
    assert Job.objects.get(pk=running.pk).progress["files_done"] == 11
    assert portal.reached_django == []


def test_a_start_is_done_on_the_loop_and_any_other_goes_to_the_view(
    machine, policy, vault, alice, monkeypatch
):
    from django.db import OperationalError

    from tests.jobs.conftest import spec

    job = services.backup_start(machine=machine)
    other = make_machine(vault, "web-02")
    services.policy_save(machine=other, spec=spec(), user=alice)
    others_job = services.backup_start(machine=other)
    token, other_token = token_for(machine), token_for(other)
    portal = Portal()
    path = f"/api/agent/jobs/{job.pk}/start/"

    def database_gone(*args):
        raise OperationalError("the database went away")

    async def scenario():
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(f"vault.{vault.pk}", channel)
        answers = [await portal.post(path, other_token, {})]  # another machine's job
        answers.append(await portal.post(path, token, {}))  # on the loop
        pushed = await asyncio.wait_for(layer.receive(channel), timeout=5)
        await layer.group_discard(f"vault.{vault.pk}", channel)
        answers.append(await portal.post(path, token, {}))  # running already: the view's
        with monkeypatch.context() as patched:
            patched.setattr(progress_api, "_start_batch_async", database_gone)
            answers.append(
                await portal.post(f"/api/agent/jobs/{others_job.pk}/start/", other_token, {})
            )
        return answers, pushed

    answers, pushed = run(scenario())
    running = {"cancel": False, "status": "running"}
    assert [status for status, _ in answers] == [404, 200, 200, 200]
    assert answers[1][1] == answers[2][1] == answers[3][1] == running
    assert [p for p, _ in portal.reached_django] == [
        path,
        path,
        f"/api/agent/jobs/{others_job.pk}/start/",
    ]
    row = Job.objects.get(pk=job.pk)
    assert row.status == Job.Status.RUNNING and row.started_at is not None
    assert f'id="job-row-{job.pk}"' in pushed["html"] and ">In progress<" in pushed["html"]
    assert Job.objects.get(pk=others_job.pk).status == Job.Status.RUNNING


def test_a_heartbeat_is_one_update_while_online_and_the_view_s_when_it_comes_back(vault):
    online = make_machine(vault, "web-01")
    offline = make_machine(vault, "web-02", online=False)
    portal = Portal()
    beat = {"agent_version": "9.9.9", "hostname": "web-01.example.test"}

    async def scenario():
        return [
            await portal.post("/api/agent/heartbeat/", token_for(online), beat),
            await portal.post("/api/agent/heartbeat/", token_for(offline), beat),
            await portal.post("/api/agent/heartbeat/", token_for(online), {"vault_id": "x"}),
        ]

    first, second, third = run(scenario())
    assert first == (200, first[1]) and first[1]["machine_id"] == str(online.pk)
    assert second[0] == 200 and third[0] == 404
    # Only the machine coming back online and the wrong vault reached the view.
    assert [path for path, _ in portal.reached_django] == ["/api/agent/heartbeat/"] * 2
    online.refresh_from_db()
    assert online.agent_version == "9.9.9" and online.hostname == "web-01.example.test"
    assert timezone.now() - online.last_seen_at < timedelta(seconds=30)
    assert Machine.objects.get(pk=offline.pk).is_online()


def test_pushes_waiting_for_one_group_leave_as_one_message(vault):
    async def scenario():
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add("vault.batch-test", channel)
        batch = realtime.loop_batch()
        for n in range(3):
            batch.add(
                groups=["vault.batch-test"],
                report={"job_progress": f"job-{n % 2}", "fields": {"n": n}},
                key="test:hotpath-batch",
                value=b"1",
                ttl=5,
            )
        pushed = await asyncio.wait_for(layer.receive(channel), timeout=5)
        await layer.group_discard("vault.batch-test", channel)
        return json.loads(pushed["html"])

    message = run(scenario())
    # In the order they came, every one (a watcher counts each report it is shown).
    assert message == {
        "job_progress_batch": [
            {"job_progress": "job-0", "fields": {"n": 0}},
            {"job_progress": "job-1", "fields": {"n": 1}},
            {"job_progress": "job-0", "fields": {"n": 2}},
        ]
    }


def test_a_start_on_the_loop_with_the_in_memory_channel_layer_is_answered(
    machine, policy, settings
):
    """A portal with Redis named but the in-memory channel layer (as a test's portal may
    run): that layer cannot say who listens nor send batches, so the hot path stands aside
    and Django's view answers the start (it was a 500)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    job = services.backup_start(machine=machine)
    portal = Portal()
    status, answer = run(portal.post(f"/api/agent/jobs/{job.pk}/start/", token_for(machine), {}))
    assert (status, answer) == (200, {"cancel": False, "status": "running"})
    assert portal.reached_django == [(f"/api/agent/jobs/{job.pk}/start/", b"{}")]
    assert Job.objects.get(pk=job.pk).status == Job.Status.RUNNING


class FenceHeld:
    """A machine's fence (``pruning.repository_fence``: its row locked, as a pack deletion
    holds it) held on a thread of its own until ``release``."""

    def __init__(self, machine):
        import threading

        self.held, self.released = threading.Event(), threading.Event()
        self.released_at = None
        self.thread = threading.Thread(target=self._hold, args=(machine.pk,))

    def _hold(self, machine_id):
        from django.db import connection

        from jobs.services.pruning import repository_fence

        try:
            with repository_fence(machine_id):
                self.held.set()
                self.released.wait(30)
                self.released_at = timezone.now()
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        assert self.held.wait(10)
        return self

    async def release_after(self, seconds: float):
        await asyncio.sleep(seconds)
        self.released.set()

    def __exit__(self, *exc):
        self.released.set()
        self.thread.join(10)


def test_starts_that_come_together_are_marked_running_together_and_refused_as_alone(vault, alice):
    """A fleet's schedule fires: its starts are committed together (``start_batch``), each
    under its machine's fence, and each refused exactly as the view refuses it alone: a
    cancelled job, another machine's job. A start whose machine's fence is held (a pack
    deletion) waits for it, without holding up the others."""
    from tests.jobs.conftest import spec

    machines = [make_machine(vault, f"web-{n:02}") for n in range(6)]
    for machine in machines:
        services.policy_save(machine=machine, spec=spec(), user=alice)
    jobs = [services.backup_start(machine=machine) for machine in machines]
    services.job_cancel(job=jobs[4], user=alice)
    tokens = [token_for(machine) for machine in machines]
    portal = Portal()
    posts = [
        (f"/api/agent/jobs/{job.pk}/start/", token) for job, token in zip(jobs, tokens, strict=True)
    ]
    posts[5] = (posts[5][0], tokens[0])  # machine 0 starting machine 5's job

    with FenceHeld(machines[3]) as fence:

        async def timed(path, token):
            answer = await portal.post(path, token, {})
            return answer, time.monotonic()

        async def scenario():
            answers = asyncio.gather(*(timed(path, token) for path, token in posts))
            await fence.release_after(1.0)
            released = time.monotonic()
            return [answer for answer, _ in await answers], [
                at > released for _, at in await answers
            ]

        answers, after_release = run(scenario())

    running = (200, {"cancel": False, "status": "running"})
    assert answers[:5] == [running] * 4 + [(200, {"cancel": True, "status": "cancelled"})]
    assert answers[5][0] == 404
    # Only the refusals reached the view.
    assert sorted(path for path, _ in portal.reached_django) == sorted([posts[4][0], posts[5][0]])
    rows = [Job.objects.get(pk=job.pk) for job in jobs]
    assert [row.status for row in rows] == [Job.Status.RUNNING] * 4 + [
        Job.Status.CANCELLED,
        Job.Status.QUEUED,
    ]
    assert all(row.started_at == row.last_report_at for row in rows[:4])
    # The fenced machine's start waited for the fence; the others did not.
    assert after_release[:4] == [False, False, False, True]


def test_heartbeats_that_come_together_are_one_statement_and_never_wait_for_a_fence(vault):
    """Heart-beats arriving together are written together; a machine whose row is held
    under its fence is not waited for there: its heart-beat goes to the view (which waits
    its turn) and is recorded all the same."""
    machines = [make_machine(vault, f"web-{n:02}") for n in range(5)]
    Machine.objects.filter(pk=machines[0].pk).update(hostname="kept.example.test")
    portal = Portal()
    beats = [{"agent_version": "9.9.9", "hostname": f"web-{n:02}.example.test"} for n in range(5)]
    beats[0] = {"agent_version": "9.9.9"}  # no hostname: the one it had is kept
    tokens = [token_for(machine) for machine in machines]  # (a new token waits for the fence)
    before = timezone.now()

    with FenceHeld(machines[2]) as fence:

        async def scenario():
            answers = asyncio.gather(
                *(
                    portal.post("/api/agent/heartbeat/", token, beat)
                    for token, beat in zip(tokens, beats, strict=True)
                )
            )
            await fence.release_after(0.5)
            return await answers

        answers = run(scenario())

    assert [status for status, _ in answers] == [200] * 5
    assert [answer["machine_id"] for _, answer in answers] == [str(m.pk) for m in machines]
    assert portal.reached_django == [("/api/agent/heartbeat/", json.dumps(beats[2]).encode())]
    rows = [Machine.objects.get(pk=machine.pk) for machine in machines]
    assert all(row.last_seen_at > before and row.agent_version == "9.9.9" for row in rows)
    assert [row.hostname for row in rows] == ["kept.example.test"] + [
        f"web-{n:02}.example.test" for n in range(1, 5)
    ]


def test_starts_that_come_together_are_pushed_together(vault, alice, monkeypatch):
    """A batch of starts is pushed as one: one question to Redis of who listens, and every
    started job's row reaches its vault's watchers. The started jobs are kept where their
    first reports look for running jobs."""
    from portal.pools import PubSubChannelLayer
    from tests.jobs.conftest import spec

    machines = [make_machine(vault, f"web-{n:02}") for n in range(3)]
    for machine in machines:
        services.policy_save(machine=machine, spec=spec(), user=alice)
    jobs = [services.backup_start(machine=machine) for machine in machines]
    tokens = [token_for(machine) for machine in machines]
    portal = Portal()
    asked: list[list[str]] = []
    groups_heard = PubSubChannelLayer.groups_heard

    async def counted(layer, groups):
        asked.append(groups)
        return await groups_heard(layer, groups)

    monkeypatch.setattr(PubSubChannelLayer, "groups_heard", counted)

    async def scenario():
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(f"vault.{vault.pk}", channel)
        answers = await asyncio.gather(
            *(
                portal.post(f"/api/agent/jobs/{job.pk}/start/", token, {})
                for job, token in zip(jobs, tokens, strict=True)
            )
        )
        pushed = [(await asyncio.wait_for(layer.receive(channel), timeout=5))["html"] for _ in jobs]
        await layer.group_discard(f"vault.{vault.pk}", channel)
        return answers, pushed

    progress_api.forget_jobs()
    answers, pushed = run(scenario())
    assert answers == [(200, {"cancel": False, "status": "running"})] * 3
    # Each job's first report finds it running here, without reading it again.
    assert {job_id: cached.machine_id for job_id, cached in progress_api._jobs.items()} == {
        str(job.pk): machine.pk for job, machine in zip(jobs, machines, strict=True)
    }
    assert sorted(html.split('"', 2)[1] for html in pushed) == sorted(
        f"job-row-{job.pk}" for job in jobs
    )
    assert len(asked) == 1 and len(asked[0]) == 4  # three jobs' groups and their vault's


def test_a_first_report_supersedes_a_start_push_not_yet_rendered_and_waits_for_one_begun(
    machine, policy
):
    job = services.backup_start(machine=machine)
    services.job_mark_started(job=job, publish=False)
    group = f"vault.{job.vault_id}"
    waiting, superseded = progress_api._StartPush(), progress_api._StartPush()

    assert progress_api._supersede(superseded) is True  # its render never begins
    assert progress_api._fragments({str(job.pk): {group}}, {str(job.pk): superseded}) == []

    fragments = progress_api._fragments({str(job.pk): {group}}, {str(job.pk): waiting})
    assert [g for g, _ in fragments] == [group] and f'id="job-row-{job.pk}"' in fragments[0][1]
    assert progress_api._supersede(waiting) is False  # begun: the report waits for it


def test_a_start_on_the_loop_tells_the_backup_center(vault, alice):
    """A job that starts is a state change the Backup center shows: a start done on the
    loop tells its subscription's open Backup centers, as a start through the view does."""
    from tests.jobs.conftest import spec

    machine = make_machine(vault, "web-01")
    services.policy_save(machine=machine, spec=spec(), user=alice)
    job = services.backup_start(machine=machine)
    portal = Portal()
    fleet = realtime.group_for_fleet(vault.subscription_id)

    async def scenario():
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(fleet, channel)
        answer = await portal.post(f"/api/agent/jobs/{job.pk}/start/", token_for(machine), {})
        heard = await asyncio.wait_for(layer.receive(channel), timeout=5)
        await layer.group_discard(fleet, channel)
        return answer, heard

    progress_api.forget_jobs()
    answer, heard = run(scenario())
    assert answer == (200, {"cancel": False, "status": "running"})
    assert heard["group"] == fleet and heard["html"] == realtime.FLEET_CHANGED


def _started_fleet(vault, alice, count: int):
    from tests.jobs.conftest import spec

    machines = [make_machine(vault, f"db-{n:02}") for n in range(count)]
    jobs = []
    for machine in machines:
        services.policy_save(machine=machine, spec=spec(), user=alice)
        job = services.backup_start(machine=machine)
        services.job_mark_started(job=job, publish=False)
        jobs.append(job)
    return machines, jobs


def test_first_reports_that_come_together_each_reach_their_watchers_rendered(vault, alice):
    """When a schedule starts a fleet every job's first report comes in the same second: each
    is answered on the loop, its row written, and its vault's watchers get its row rendered
    with the report's numbers."""
    machines, jobs = _started_fleet(vault, alice, 4)
    tokens = [token_for(machine) for machine in machines]
    portal = Portal()

    async def scenario():
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(f"vault.{vault.pk}", channel)
        answers = await asyncio.gather(
            *(
                portal.post(f"/api/agent/jobs/{job.pk}/progress/", token, report(10 + n))
                for n, (job, token) in enumerate(zip(jobs, tokens, strict=True))
            )
        )
        pushed = [(await asyncio.wait_for(layer.receive(channel), timeout=5))["html"] for _ in jobs]
        await layer.group_discard(f"vault.{vault.pk}", channel)
        return answers, pushed

    progress_api.forget_jobs()
    answers, pushed = run(scenario())
    assert answers == [(200, {"cancel": False})] * 4
    assert portal.reached_django == []
    rows = {html.split('"', 2)[1]: html for html in pushed}
    for n, job in enumerate(jobs):
        transferred = filesizeformat((10 + n) * 400_000)  # the report's stored bytes
        assert f'<td data-field="transferred">{transferred}</td>' in rows[f"job-row-{job.pk}"]
        assert Job.objects.get(pk=job.pk).progress["files_done"] == 10 + n


def test_re_rendering_reports_recorded_together_read_their_jobs_once(vault, alice, machine):
    """A batch of reports that re-render reads its jobs (with what their rows show) in one
    query, not one and another to render for each, and hands the fragments back to be
    pushed in one round trip; a report for a job that is not the machine's is the view's."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    machines, jobs = _started_fleet(vault, alice, 3)
    group = f"vault.{vault.pk}"
    items = [(str(job.pk), m.pk, report(5), {group}) for job, m in zip(jobs, machines, strict=True)]
    items.append((str(jobs[0].pk), machine.pk, report(6), {group}))  # not machine's job
    with CaptureQueriesContext(connection) as queries:
        answers, pushes = progress_api.record_reshaped(items)
    assert answers == [False, False, False, None]
    selects = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1, selects
    assert [g for g, _ in pushes] == [group] * 3
    assert [html.split('"', 2)[1] for _, html in pushes] == [f"job-row-{job.pk}" for job in jobs]


def test_a_report_of_a_batch_that_the_database_refuses_goes_to_the_view_alone(
    vault, alice, monkeypatch
):
    """One report of a batch that fails on the database is answered by the view (None); the
    others of the batch are recorded and their fragments kept for the push."""
    from django.db import DatabaseError

    from jobs.services import jobs as job_services

    machines, jobs = _started_fleet(vault, alice, 3)
    group = f"vault.{vault.pk}"
    record = job_services.job_record_progress

    def refused_for_the_second(*, job, **kwargs):
        if job.pk == jobs[1].pk:
            raise DatabaseError("could not serialize access")
        return record(job=job, **kwargs)

    monkeypatch.setattr(progress_api, "job_record_progress", refused_for_the_second)
    items = [(str(job.pk), m.pk, report(7), {group}) for job, m in zip(jobs, machines, strict=True)]
    answers, pushes = progress_api.record_reshaped(items)
    assert answers == [False, None, False]
    assert [html.split('"', 2)[1] for _, html in pushes] == [
        f"job-row-{jobs[0].pk}",
        f"job-row-{jobs[2].pk}",
    ]
    assert Job.objects.get(pk=jobs[2].pk).progress["files_done"] == 7
