"""However many agents post at once, a portal process holds no more PostgreSQL and Redis
connections than it is configured for, and a request past the bound is answered 503 with
Retry-After (which the agent's client waits out), never 500.

A real daphne serves the test database with a pool of two connections and room for three
requests inside Django. The test holds a lock on the jobs' rows, so the first progress posts
block in PostgreSQL while holding their pooled connections: what would be a slow database
under a flood of agents, made to happen on purpose. Those first posts are for jobs not
started yet, which Django's view starts (with Redis the event loop answers a running job's
reports, its first ones on one thread of its own per process, which a locked row holds up
without taking the pool)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from django.db import connection

from agents.api_auth import machine_token_issue
from agents.runtime.portal_api import PortalBusy, PortalClient
from jobs.models import Job
from tests.support import builders
from tests.support.faultproxy import FaultProxy
from tests.support.procnet import tcp_connections_to
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
APPLICATION = ["portal.asgi:application"]
POOL = 2
CONCURRENCY = 3
REDIS_POOL = 2
# Per process: the cache's and the channel layer's pools, and the Celery producer's two
# broker connections (one Redis connection each, one more for a pipeline at most):
# docs/configuration.md, "Sizing connections".
REDIS_BOUND = 2 * REDIS_POOL + 4
BOUNDS = {
    "HAVEN_DB_POOL_SIZE": str(POOL),
    "HAVEN_DB_POOL_TIMEOUT": "1",
    "HAVEN_PORTAL_CONCURRENCY": str(CONCURRENCY),
    "HAVEN_PORTAL_QUEUE_SECONDS": "0.5",
    "HAVEN_PORTAL_RETRY_AFTER": "1",
    "HAVEN_REDIS_POOL_SIZE": str(REDIS_POOL),
}


@dataclass
class Portal:
    url: str
    pid: int
    db_port: int
    redis_port: int | None


def _database_url() -> str:
    params = connection.settings_dict
    user = params["USER"] or "postgres"
    auth = f"{user}:{params['PASSWORD']}" if params["PASSWORD"] else user
    return f"postgres://{auth}@{params['HOST'] or '127.0.0.1'}:{params['PORT'] or 5432}/{params['NAME']}"


@contextmanager
def serving(tmp_path: Path, **extra_env: str) -> Iterator[Portal]:
    """daphne serving the test database with the small bounds above (from the environment,
    as in production), and ``extra_env``."""
    if connection.vendor != "postgresql":
        pytest.skip("connection bounds are PostgreSQL's (the servers pass)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    env.update(BOUNDS, DATABASE_URL=_database_url(), HAVEN_DATA_DIR=str(tmp_path / "data"))
    env.update(extra_env)
    log_path = tmp_path / f"daphne-{port}.log"
    log = log_path.open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), *APPLICATION],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/signin/", timeout=2)
                break
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("daphne did not start: " + log_path.read_text())
                time.sleep(0.2)
        redis = env.get("REDIS_URL")
        yield Portal(
            url,
            server.pid,
            int(connection.settings_dict["PORT"] or 5432),
            (urlsplit(redis).port or 6379) if redis else None,
        )
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()
    # A busy portal is not a broken one: no traceback in its log.
    assert b"Traceback" not in log_path.read_bytes(), log_path.read_text()


@pytest.fixture
def bounded_portal(transactional_db, tmp_path) -> Iterator[Portal]:
    with serving(tmp_path) as portal:
        yield portal


@pytest.fixture
def agents(resource_group) -> list[tuple[str, str]]:
    """Twelve machines, each with a running backup and its token: (job id, token)."""
    vault = builders.make_vault(resource_group=resource_group)
    found = []
    for i in range(12):
        machine = builders.make_machine(vault=vault, name=f"m{i:02}")
        job = Job.objects.create(
            vault=vault, machine=machine, operation=Job.Operation.BACKUP, status=Job.Status.RUNNING
        )
        found.append((str(job.pk), machine_token_issue(machine=machine)))
    return found


@contextmanager
def jobs_locked() -> Iterator[threading.Event]:
    """Every job row locked by another session until the event is set (or the block ends;
    30 s at most)."""
    import psycopg

    release = threading.Event()
    locker = psycopg.connect(_database_url())
    locker.execute("SELECT id FROM jobs_job FOR UPDATE")

    def unlock() -> None:
        release.wait(30)
        locker.rollback()
        locker.close()

    unlocker = threading.Thread(target=unlock, daemon=True)
    unlocker.start()
    try:
        yield release
    finally:
        release.set()
        unlocker.join(30)


def waiting_on_locks(minimum: int) -> None:
    """Until ``minimum`` sessions of the test database wait on a lock (10 s at most)."""
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0] >= minimum:
                return
            time.sleep(0.05)
    pytest.fail(f"fewer than {minimum} requests blocked on the locked rows")


def progress(portal: Portal, job_id: str, token: str) -> requests.Response:
    return requests.post(
        f"{portal.url}/api/agent/jobs/{job_id}/progress/",
        json={"type": "progress", "phase": "backing_up", "files_done": 1},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def job_detail(portal: Portal, job_id: str, token: str) -> requests.Response:
    return requests.get(
        f"{portal.url}/api/agent/jobs/{job_id}/",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def in_threads(calls) -> list:
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except requests.RequestException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    return [threads, results]


class Peaks:
    """The most connections the portal process held to PostgreSQL and Redis meanwhile."""

    def __init__(self, portal: Portal):
        self.portal = portal
        self.db = self.redis = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.db = max(self.db, tcp_connections_to(self.portal.pid, self.portal.db_port))
            if self.portal.redis_port:
                self.redis = max(
                    self.redis, tcp_connections_to(self.portal.pid, self.portal.redis_port)
                )

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def assert_busy(response: requests.Response, *, json_body: bool = True) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert int(response.headers["Retry-After"]) >= 1
    if json_body:
        assert response.json()["message"]


def _not_started(agents: list[tuple[str, str]]) -> None:
    """The jobs of ``agents`` queued, not running: their progress goes to Django's view."""
    Job.objects.filter(pk__in=[job_id for job_id, _ in agents]).update(status=Job.Status.QUEUED)


def test_a_flood_of_agents_holds_no_more_database_connections_than_the_pool(bounded_portal, agents):
    portal = bounded_portal
    _not_started(agents[:POOL])
    with Peaks(portal) as peaks, jobs_locked() as release:
        first = in_threads([lambda a=a: progress(portal, *a) for a in agents[:POOL]])
        waiting_on_locks(POOL)  # both pooled connections are now held by blocked requests
        rest = in_threads(
            [lambda a=a: progress(portal, *a) for a in agents[POOL:8]]
            + [lambda a=a: job_detail(portal, *a) for a in agents[8:]]
        )
        for thread in rest[0]:
            thread.join(30)
        release.set()
    for thread in first[0]:
        thread.join(30)

    for response in rest[1]:
        assert isinstance(response, requests.Response), response
        assert_busy(response)
    assert [r.status_code for r in first[1]] == [200] * POOL
    assert 1 <= peaks.db <= POOL
    if portal.redis_port:
        assert peaks.redis <= REDIS_BOUND


def test_a_person_is_shown_a_busy_page_not_an_error(transactional_db, tmp_path, agents, page):
    # Without Redis: with it, these first reports are recorded on the event loop's own
    # threads (jobs/progress_api.py) and never take Django's places, which is what this
    # test fills on purpose.
    with serving(tmp_path, REDIS_URL="") as portal:
        _busy_page_shown(portal, agents, page)


def _busy_page_shown(portal, agents, page):
    with jobs_locked() as release:
        blocked = in_threads([lambda a=a: progress(portal, *a) for a in agents[:POOL]])
        waiting_on_locks(POOL)
        # The third place inside Django goes to a request that waits for a connection...
        third = in_threads([lambda: job_detail(portal, *agents[POOL])])
        time.sleep(0.2)
        # ...so a person's page waits its turn, then is told to come back.
        shown = page.goto(portal.url + "/signin/")
        for thread in third[0]:
            thread.join(30)
        release.set()
    for thread in blocked[0]:
        thread.join(30)

    assert shown is not None and shown.status == 503
    assert shown.headers["retry-after"] == "1"
    assert page.get_by_role("heading").inner_text() == "The portal is busy"
    assert "Try again in 1 second." in page.locator("main").inner_text()
    assert_busy(third[1][0])


def test_the_agent_waits_out_a_busy_portal_and_then_succeeds(bounded_portal, agents):
    portal = bounded_portal
    job_id, token = agents[POOL]
    client = PortalClient(portal.url, token=token)
    _not_started(agents[:POOL])
    with jobs_locked() as release:
        blocked = in_threads([lambda a=a: progress(portal, *a) for a in agents[:POOL]])
        waiting_on_locks(POOL)
        # A progress report is not sent again by the client: its sink sends the next one.
        with pytest.raises(PortalBusy) as busy:
            client.post(f"jobs/{job_id}/progress/", {"type": "progress", "phase": "scanning"})
        assert busy.value.retry_after == 1
        assert client.busy_until > time.monotonic()
        threading.Timer(1.5, release.set).start()
        started = time.monotonic()
        # A read is: it waits out Retry-After and tries again until the portal has room.
        job = client.get(f"jobs/{job_id}/")
        waited = time.monotonic() - started
    for thread in blocked[0]:
        thread.join(30)

    assert job["status"] == Job.Status.RUNNING
    assert waited >= 1.0
    assert [r.status_code for r in blocked[1]] == [200] * POOL
    client.close()


def test_requests_past_the_bound_wait_their_turn_then_are_told_to_retry(settings):
    """The limiter alone (no server): two places, a wait of 0.2 s."""
    from portal.concurrency import Limiter

    settings.HAVEN_PORTAL_RETRY_AFTER = 2

    async def scenario():
        opened = asyncio.Event()
        peak = 0

        async def app(scope, receive, send):
            nonlocal peak
            peak = max(peak, limiter.inside)
            await opened.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        limiter = Limiter(app, limit=2, wait=0.2)

        async def call(path):
            sent = []

            async def send(message):
                sent.append(message)

            async def receive():
                return {"type": "http.request", "body": b""}

            await limiter({"type": "http", "path": path, "method": "GET"}, receive, send)
            return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]

        calls = [asyncio.create_task(call(p)) for p in ("/a/", "/b/", "/api/agent/c/", "/d/")]
        await asyncio.sleep(0.4)
        opened.set()
        answers = await asyncio.gather(*calls)
        after = await call("/e/")
        return peak, answers, after

    # On a thread of its own: a browser test before this one leaves Playwright's loop running.
    with ThreadPoolExecutor(max_workers=1) as pool:
        peak, answers, after = pool.submit(lambda: asyncio.run(scenario())).result(timeout=30)
    assert peak == 2
    assert [a[0] for a in answers] == [200, 200, 503, 503]
    agent, person = answers[2], answers[3]
    assert agent[1][b"retry-after"] == person[1][b"retry-after"] == b"2"
    assert json.loads(agent[2])["error"] == "busy"
    assert b"The portal is busy" in person[2]
    assert after[0] == 200  # the places came back


def test_a_forked_process_does_not_talk_over_its_parents_pooled_connection(transactional_db):
    """A Celery worker's children and the tests' live servers are forked from a process
    that may have used the pool: sharing a pooled socket mixes two sessions' messages."""
    if connection.vendor != "postgresql":
        pytest.skip("the pool is PostgreSQL's (the servers pass)")

    def backend_pid() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    connection.close()
    connection.close_pool()  # a fresh pool that will hold one connection: the parent's
    parent = backend_pid()
    connection.close()  # back to the pool, idle: what a fork finds there
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, str(backend_pid()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    os.waitpid(child, 0)

    assert reported and int(reported) != parent
    assert backend_pid() == parent  # and the parent's own session is intact


def test_a_request_that_finds_no_redis_connection_free_is_told_to_retry(
    transactional_db, tmp_path, agents
):
    """Redis answers slowly (a proxy delays every packet); the cache's pool has one
    connection and waits half a second for it."""
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.skip("needs Redis (the servers pass)")
    real = urlsplit(redis_url)
    with FaultProxy(real.hostname or "127.0.0.1", real.port or 6379) as proxy:
        slow = real._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
        env = {"REDIS_URL": slow, "HAVEN_REDIS_POOL_SIZE": "1", "HAVEN_REDIS_POOL_TIMEOUT": "0.5"}
        with serving(tmp_path, **env) as portal:
            proxy.delay = 1.5
            threads, answers = in_threads([lambda a=a: job_detail(portal, *a) for a in agents[:2]])
            for thread in threads:
                thread.join(30)
            proxy.delay = 0

    assert sorted(a.status_code for a in answers) == [200, 503]
    assert_busy(next(a for a in answers if a.status_code == 503))
