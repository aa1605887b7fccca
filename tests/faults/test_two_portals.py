"""Two portals, one state: two real daphne processes on one PostgreSQL, Redis and storage,
each with its own (empty) data directory, behind a loopback reverse proxy that the test
points at one portal or the other for each step. Whatever one portal did, the other one
knows: the session, the job's live progress, the downloaded archive, the signing key.

No portal worker runs: nothing below goes through the portal's Celery queue (pushes go
through the Redis channel layer, tasks for agents straight to the machine's queue)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from urllib.parse import quote

import pytest
import redis
import requests
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection
from django.utils import timezone

from agents import broker
from agents.models import Machine
from agents.runtime import protocol
from agents.runtime.tasksig import verify_task
from jobs.models import Job, RecoveryPoint
from tests.support import builders
from tests.support.portals import PortalProcess, PortalProxy, WebSocket
from vaults.storage import primary_account

SECRET = "two-portals-share-this-secret-key-" + "k" * 40
CLOSE = {"Connection": "close"}  # each request opens a connection: the proxy may move it


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor != "postgresql":
        # The embedded pass runs without servers on purpose; the servers pass has them.
        pytest.skip("two portals share PostgreSQL (the servers pass)")
    auth = quote(db["USER"] or "postgres") + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def portals(transactional_db, settings, tmp_path):
    """(proxy, [portal 1, portal 2]) serving the test database."""
    if not settings.REDIS_URL:
        pytest.skip("two portals share Redis (the servers pass)")
    env = {
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": SECRET,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
    }
    if settings.AZURE_STORAGE_CONNECTION_STRING:
        env["AZURE_STORAGE_CONNECTION_STRING"] = settings.AZURE_STORAGE_CONNECTION_STRING
    else:
        env["HAVEN_STORAGE_DIR"] = str(settings.STORAGE_DIR)  # the shared storage
    ones = [
        PortalProcess(env, data_dir=tmp_path / f"portal-{i}", name=f"portal-{i}") for i in (1, 2)
    ]
    proxy = PortalProxy([p.port for p in ones])
    try:
        for portal in ones:
            portal.env["HAVEN_PUBLIC_URL"] = proxy.url
            portal.start()
        yield proxy, ones
    finally:
        proxy.close()
        for portal in ones:
            portal.stop()


@pytest.fixture
def cast(transactional_db):
    alice = builders.make_user(username="alice", email="alice@example.test")
    # The suite hashes with MD5 for speed; the portals know only the real hashers.
    alice.password = PBKDF2PasswordHasher().encode(builders.PASSWORD, "twoportals")
    alice.save(update_fields=["password"])
    subscription = builders.make_subscription(owner=alice)
    group = builders.make_resource_group(subscription=subscription)
    vault = builders.make_vault(resource_group=group, container="vault-two-portals")
    primary_account().create_container(vault.container)
    return alice, vault


def _sign_in(session: requests.Session, base: str) -> requests.Response:
    session.get(f"{base}/signin/", headers=CLOSE, timeout=10)
    return session.post(
        f"{base}/signin/",
        data={
            "username": "alice",
            "password": builders.PASSWORD,
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
        headers=CLOSE,
        allow_redirects=False,
        timeout=10,
    )


def _signed_task(redis_url: str, queue: str, task: str, *, timeout: float = 10) -> dict:
    """The message for ``task`` on the machine's queue (taken off it), as the agent gets it."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for raw in client.lrange(queue, 0, -1):
                message = json.loads(raw)
                if message["headers"]["task"] == task:
                    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
                    return {"id": message["headers"]["id"], "args": args, "kwargs": kwargs}
            time.sleep(0.1)
        raise AssertionError(f"no {task} message on {queue} within {timeout} s")
    finally:
        client.close()


def test_two_portals_serve_one_fleet_whatever_portal_each_step_reaches(portals, cast, settings):
    proxy, (one, two) = portals
    _alice, vault = cast
    base = proxy.url
    browser = requests.Session()

    # Signed in through portal 1; portal 2 knows the session (it is in the database).
    proxy.use(0)
    signed_in = _sign_in(browser, base)
    assert signed_in.status_code == 302, signed_in.text[-500:]
    proxy.use(1)
    page = browser.get(f"{base}/jobs/", headers=CLOSE, allow_redirects=False, timeout=10)
    assert page.status_code == 200, page.headers.get("Location")

    # Vault credentials signed by portal 2 register a machine through portal 1; both
    # portals answer with the one public key the agent pins.
    credentials = browser.post(
        f"{base}/vaults/{vault.pk}/credentials/download/",
        data={"agent_ready": "on", "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
        headers=CLOSE,
        timeout=10,
    )
    assert credentials.status_code == 200, credentials.text[:300]
    proxy.use(0)
    registered = requests.post(
        f"{base}/api/agent/register/",
        json={"credentials": credentials.text, "machine_name": "web-01", "time_zone": "UTC"},
        headers=CLOSE,
        timeout=30,
    )
    assert registered.status_code == 201, registered.text
    answer = registered.json()
    machine = Machine.objects.get(pk=answer["machine_id"])
    agent = {**CLOSE, "Authorization": f"Bearer {answer['token']}"}
    try:
        identities = []
        for index in (0, 1):
            proxy.use(index)
            identities.append(
                requests.get(f"{base}/api/agent/identity/", headers=CLOSE, timeout=10).json()
            )
        assert {i["public_key"] for i in identities} == {answer["portal_public_key"]}

        # A download asked for on portal 2: its task, signed there, verifies with the key the
        # agent got from portal 1.
        Machine.objects.filter(pk=machine.pk).update(last_seen_at=timezone.now())
        point = RecoveryPoint.objects.create(
            machine=machine, vault=vault, snapshot_id="b" * 32, manifest_blob="m",
            created_at=timezone.now(), tagged_for=timezone.now(), kind="adhoc",
        )  # fmt: skip
        proxy.use(1)
        asked = browser.post(
            f"{base}/recover/{machine.pk}/to/{machine.pk}/download/",
            data={
                "rp": point.snapshot_id,
                "paths": ["/home/a.txt"],
                "csrfmiddlewaretoken": browser.cookies["csrftoken"],
            },
            headers=CLOSE,
            allow_redirects=False,
            timeout=10,
        )
        assert asked.status_code == 302, asked.text[:300]
        job = Job.objects.get(machine=machine)
        task = _signed_task(settings.REDIS_URL, machine.queue, protocol.DOWNLOAD_TASK)
        assert task["kwargs"]["job_id"] == str(job.pk)
        verify_task(
            task=protocol.DOWNLOAD_TASK,
            task_id=task["id"],
            args=task["args"],
            kwargs=task["kwargs"],
            machine_id=str(machine.pk),
            public_key_b64=answer["portal_public_key"],
        )

        # A page on portal 1 watches the job; the agent reports progress to portal 2.
        proxy.use(0)
        socket = WebSocket(
            proxy.port,
            f"/ws/live/?watch=job:{job.pk}",
            cookie=f"sessionid={browser.cookies['sessionid']}",
        )
        try:
            proxy.use(1)
            progress = requests.post(
                f"{base}/api/agent/jobs/{job.pk}/progress/",
                json={"phase": "reading", "files_done": 7, "files_total": 12,
                      "current": "/home/two-portals.txt"},
                headers=agent,
                timeout=10,
            )  # fmt: skip
            assert progress.status_code == 200, progress.text
            pushed = socket.receive_until("/home/two-portals.txt", timeout=15)
            assert "7 of 12" in pushed
        finally:
            socket.close()

        # The archive goes to portal 2 (in parts: larger than one) and comes out of portal 1.
        archive = random.Random(6).randbytes(9 * 1024 * 1024 + 321)
        proxy.use(1)
        posted = requests.post(
            f"{base}/api/agent/recovery/downloads/{job.pk}/",
            data=archive,
            headers={**agent, "Content-Type": "application/gzip"},
            timeout=60,
        )
        assert posted.status_code == 200, posted.text
        finished = requests.post(
            f"{base}/api/agent/jobs/{job.pk}/result/",
            json={"status": protocol.JobStatus.COMPLETED.value},
            headers=agent,
            timeout=10,
        )
        assert finished.status_code == 200, finished.text
        proxy.use(0)
        got = browser.get(f"{base}/recover/downloads/{job.pk}/file/", headers=CLOSE, timeout=60)
        assert got.status_code == 200
        body = got.content
        first_difference = next(
            (i for i, (a, b) in enumerate(zip(body, archive, strict=False)) if a != b), None
        )
        assert (len(body), first_difference) == (len(archive), None)
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256(archive).hexdigest()

        # Neither portal kept any of it on its own disk.
        for portal in (one, two):
            files = [p for p in portal.data_dir.rglob("*") if p.is_file()]
            assert files == [], f"{portal.name} wrote {files}"
    finally:
        broker.broker_user_delete(username=machine.broker_username)
        client = redis.Redis.from_url(settings.REDIS_URL)
        client.delete(machine.queue)
        client.close()


def test_in_a_browser_progress_an_agent_posts_to_the_other_portal_shows_on_the_job_page(
    portals, cast, page
):
    from playwright.sync_api import expect

    from agents.api_auth import machine_token_issue

    proxy, _ = portals
    alice, vault = cast
    machine = builders.make_machine(vault=vault, name="web-01", last_seen_at=timezone.now())
    job = Job.objects.create(
        vault=vault, machine=machine, operation=Job.Operation.BACKUP,
        status=Job.Status.QUEUED, created_by=alice,
    )  # fmt: skip
    token = machine_token_issue(machine=machine)
    page.set_default_timeout(15_000)
    proxy.use(0)  # the browser signs in and opens the job page on portal 1
    page.goto(f"{proxy.url}/signin/")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(builders.PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{proxy.url}/jobs/{job.pk}/")
    expect(page.locator("body")).to_have_attribute("data-live", "open")
    proxy.use(1)  # the agent reports to portal 2
    reported = requests.post(
        f"{proxy.url}/api/agent/jobs/{job.pk}/progress/",
        json={"phase": "uploading", "files_done": 3, "files_total": 9,
              "current": "/srv/seen-through-the-other-portal.txt"},
        headers={**CLOSE, "Authorization": f"Bearer {token}"},
        timeout=10,
    )  # fmt: skip
    assert reported.status_code == 200, reported.text
    live = page.locator(f"#job-{job.pk}-live")
    expect(live.locator("[data-field=current]")).to_have_text(
        "/srv/seen-through-the-other-portal.txt"
    )
    expect(live.locator("[data-field=status]")).to_have_text("In progress")
