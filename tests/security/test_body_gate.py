"""An outsider cannot make the portal store a body it will refuse: a huge upload with a
bogus grant or token is answered from its headers, before the body is sent, and nothing
is spooled to disk meanwhile. Run against a real daphne (it reads whole bodies before it
calls the application, which is what made the attack work), on a raw socket, as an
attacker's own client would."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.test import Client
from django.urls import reverse

from agents.api_auth import machine_token_issue
from agents.runtime import protocol
from portal import gate
from portal.asgi import application
from tests.support import builders
from vaults.storage import primary_account

BIG = 400 * 1024 * 1024  # what the attack declared: 400 MB


def _application():
    from portal.asgi import application

    return application


@pytest.fixture
def daphne(transactional_db, settings, tmp_path):
    """A real daphne serving portal.asgi from the test database, storage in tmp_path;
    yields (base host, port, server process id)."""
    from daphne.testing import DaphneProcess
    from django.db import connections

    settings.AZURE_STORAGE_CONNECTION_STRING = None

    settings.SECONDARY_STORAGE_CONNECTION_STRING = None
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.SECONDARY_STORAGE_DIR = tmp_path / "storage-secondary"
    for connection in connections.all():
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            pytest.fail("this test needs a file-based test database (settings TEST NAME)")
    connections.close_all()
    server = DaphneProcess("127.0.0.1", _application)
    server.daemon = True
    server.start()
    if not server.ready.wait(30):
        server.terminate()
        pytest.fail("daphne did not start")
    settings.HAVEN_PUBLIC_URL = f"http://127.0.0.1:{server.port.value}"
    try:
        yield "127.0.0.1", server.port.value, server.pid
    finally:
        server.terminate()
        server.join(10)
        if server.is_alive():
            server.kill()
            server.join(5)


def open_temporary_files(pid: int) -> set[str]:
    """Temporary files the server process holds open (Twisted's request bodies are
    anonymous temporary files: they show as deleted, or under the temp directory)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith("(deleted)") or target.startswith(("/tmp/", "/var/tmp/")):
            found.add(f"{fd.name} {target}")
    return found


@pytest.fixture
def spooled_files(daphne):
    """Temporary files the server opened since the test started (it inherits some)."""
    before = open_temporary_files(daphne[2])
    return lambda pid: sorted(open_temporary_files(pid) - before)


def send_headers(host: str, port: int, request_line: str, headers: dict[str, str]) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    lines = [request_line, f"Host: {host}:{port}"] + [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of the answer (the socket's timeout bounds the wait)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


@pytest.fixture
def machine_token(resource_group) -> str:
    vault = builders.make_vault(resource_group=resource_group, container="vault-gate")
    machine = builders.make_machine(vault=vault)
    return machine_token_issue(machine=machine)


def test_a_huge_put_with_a_bogus_grant_is_answered_before_its_body(daphne, spooled_files):
    host, port, pid = daphne
    sock = send_headers(
        host,
        port,
        "PUT /storage/machine-0123456789abcdef/snapshots/x HTTP/1.1",
        {"Authorization": "HavenGrant bogus", "Content-Length": str(BIG)},
    )
    with sock:
        status, body = read_answer(sock)  # not one byte of the body was sent
        assert (status, body["error"]) == (403, "forbidden")
        assert spooled_files(pid) == []


def test_a_client_that_waits_for_100_continue_is_refused_instead(daphne, spooled_files):
    """curl asks "Expect: 100-continue" before big bodies: the answer must be the refusal,
    not an invitation to send the body."""
    host, port, pid = daphne
    sock = send_headers(
        host,
        port,
        "PUT /storage/machine-0123456789abcdef/snapshots/x HTTP/1.1",
        {
            "Authorization": "HavenGrant bogus",
            "Content-Length": str(BIG),
            "Expect": "100-continue",
        },
    )
    with sock:
        status, body = read_answer(sock)
        assert (status, body["error"]) == (403, "forbidden")
        assert spooled_files(pid) == []


def test_a_client_that_waits_for_100_continue_is_invited_once_approved(daphne):
    container = f"machine-{uuid.uuid4().hex}"
    account = primary_account()
    account.create_container(container)
    grant = account.issue_grant(container, expires_at=datetime.now(UTC) + timedelta(hours=1))
    host, port, _ = daphne
    name = f"/storage/{container}/data/ef/" + "ef" * 16
    pack = os.urandom(200_000)
    sock = send_headers(
        host,
        port,
        f"PUT {name} HTTP/1.1",
        {
            "Authorization": f"HavenGrant {grant['token']}",
            "Content-Length": str(len(pack)),
            "Expect": "100-continue",
        },
    )
    with sock:
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(pack)
        status, _ = read_answer(sock)
    assert status == 201
    assert account.store(container).get(name.split("/", 3)[3]) == pack


def test_a_huge_put_without_a_grant_is_answered_before_its_body(daphne):
    host, port, _ = daphne
    with send_headers(
        host, port, "PUT /storage/machine-0123/x HTTP/1.1", {"Content-Length": str(BIG)}
    ) as sock:
        assert read_answer(sock)[0] == 401


def test_a_huge_post_with_a_bogus_machine_token_is_answered_before_its_body(daphne, spooled_files):
    host, port, pid = daphne
    sock = send_headers(
        host,
        port,
        f"POST /api/agent/jobs/{uuid.uuid4()}/progress/ HTTP/1.1",
        {
            "Authorization": "Bearer hvn_not-a-token",
            "Content-Type": "application/json",
            "Content-Length": str(BIG),
        },
    )
    with sock:
        status, body = read_answer(sock)
        assert (status, body["error"]) == (401, "unauthenticated")
        assert spooled_files(pid) == []


def test_a_refused_body_that_is_sent_anyway_is_dropped_not_spooled(daphne, spooled_files):
    host, port, pid = daphne
    sock = send_headers(
        host,
        port,
        "PUT /storage/machine-0123456789abcdef/data/aa HTTP/1.1",
        {"Authorization": "HavenGrant bogus", "Content-Length": str(BIG)},
    )
    with sock:
        try:
            for _ in range(32):  # 32 MiB of it, as a client that does not wait would
                sock.sendall(b"\0" * (1024 * 1024))
                assert spooled_files(pid) == []
        except (BrokenPipeError, ConnectionResetError):
            pass  # the portal hung up on it: also fine
        assert spooled_files(pid) == []


def test_a_machine_cannot_declare_a_body_larger_than_the_endpoint_takes(daphne, machine_token):
    host, port, _ = daphne
    sock = send_headers(
        host,
        port,
        f"POST /api/agent/jobs/{uuid.uuid4()}/progress/ HTTP/1.1",
        {
            "Authorization": f"Bearer {machine_token}",
            "Content-Length": str(protocol.MAX_API_BODY + 1),
        },
    )
    with sock:
        status, body = read_answer(sock)
    assert (status, body["error"]) == (413, "too_large")
    assert str(protocol.MAX_API_BODY) in body["message"]


def test_a_chunked_body_past_the_limit_is_cut_off(daphne, machine_token):
    host, port, _ = daphne
    sock = send_headers(
        host,
        port,
        "POST /api/agent/heartbeat/ HTTP/1.1",
        {"Authorization": f"Bearer {machine_token}", "Transfer-Encoding": "chunked"},
    )
    with sock:
        chunk = b"x" * (64 * 1024)
        try:
            for _ in range(protocol.MAX_AGENT_API_BODY // len(chunk) + 2):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, body = read_answer(sock)
    assert (status, body["error"]) == (413, "too_large")


def test_requests_with_good_credentials_still_go_through(daphne, machine_token, settings):
    """The other side: the gate holds the body only until the answer, then lets it in."""
    import requests

    base = settings.HAVEN_PUBLIC_URL
    beat = requests.post(
        f"{base}/api/agent/heartbeat/",
        json={"hostname": "web-01"},
        headers={"Authorization": f"Bearer {machine_token}"},
        timeout=10,
    )
    assert beat.status_code == 200, beat.text

    container = f"machine-{uuid.uuid4().hex}"
    account = primary_account()
    account.create_container(container)
    grant = account.issue_grant(container, expires_at=datetime.now(UTC) + timedelta(hours=1))
    pack = os.urandom(3 * 1024 * 1024)  # more than one socket read: held, then spooled
    stored = requests.put(
        grant["base_url"] + "data/ab/" + "ab" * 16,
        data=pack,
        headers={"Authorization": f"HavenGrant {grant['token']}"},
        timeout=30,
    )
    assert stored.status_code == 201, stored.text
    assert account.store(container).get("data/ab/" + "ab" * 16) == pack


def test_djangos_body_limit_lets_each_endpoint_take_its_own_limit(machine_token):
    """A recovery answer may be 8 MiB: Django must not refuse it at 2.5 MB first."""
    assert (
        max(
            rule.limit
            for rule in gate.RULES
            if rule.prefix != "/storage/" and "downloads" not in rule.prefix
        )
        <= django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    )
    answer = json.dumps({"pad": "x" * (5 * 1024 * 1024)})
    response = Client().post(
        reverse("recovery_api:answer", kwargs={"request_id": "no-such-request"}),
        data=answer,
        content_type="application/json",
        headers={"Authorization": f"Bearer {machine_token}"},
    )
    assert response.status_code == 404  # read and looked up; not 400 "too large"


@pytest.mark.parametrize(
    ("name", "kwargs", "credential"),
    [
        ("jobs_api:progress", {"job_id": uuid.uuid4()}, gate.MACHINE),
        ("recovery_api:download", {"job_id": uuid.uuid4()}, gate.MACHINE),
        ("recovery_api:answer", {"request_id": "r"}, gate.MACHINE),
        ("agent_api:heartbeat", {}, gate.MACHINE),
        ("agent_api:grant", {}, gate.MACHINE),
        ("agent_api:register", {}, None),
        ("storage:blob", {"container": "machine-1", "name": "a/b"}, gate.GRANT),
    ],
)
def test_every_agent_endpoint_is_behind_the_gate(name, kwargs, credential):
    rule = gate.rule_for(reverse(name, kwargs=kwargs))
    assert rule is not None and rule.credential == credential


# --- The ASGI layer, for servers that stream bodies to the application (uvicorn, hypercorn) --
def asgi_request(method: str, path: str, headers: dict[str, str], chunks: list[bytes]):
    """Drive ``portal.asgi``'s HTTP app; returns (status, JSON body, chunks it read)."""
    read: list[bytes] = []
    sent: list[dict] = []
    pending = list(chunks)

    async def receive():
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        read.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }

    async def run():
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1)
        loop.set_default_executor(executor)
        try:
            await application(scope, receive, send)
        finally:  # the database check ran on this thread: close its connection
            await loop.run_in_executor(executor, connections.close_all)

    # On a thread of its own: a browser test earlier in the session may have left an event
    # loop running on this one, and asyncio.run() refuses to nest.
    runner = threading.Thread(target=asyncio.run, args=(run(),))
    runner.start()
    runner.join(timeout=60)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body or b"{}"), read


def test_the_asgi_gate_refuses_a_bogus_grant_without_reading_the_body(settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    status, body, read = asgi_request(
        "PUT",
        "/storage/machine-0123/snapshots/x",
        {"Authorization": "HavenGrant bogus", "Content-Length": str(BIG)},
        [b"\0" * 65536] * 4,
    )
    assert (status, body["error"], read) == (403, "forbidden", [])


@pytest.mark.django_db(transaction=True)
def test_the_asgi_gate_cuts_off_a_chunked_body_past_the_limit(settings, machine_token):
    settings.ALLOWED_HOSTS = ["testserver"]
    chunk = b"x" * (64 * 1024)
    chunks = [chunk] * (protocol.MAX_AGENT_API_BODY // len(chunk) + 4)
    status, body, read = asgi_request(
        "POST",
        "/api/agent/heartbeat/",
        {"Authorization": f"Bearer {machine_token}", "Transfer-Encoding": "chunked"},
        chunks,
    )
    assert (status, body["error"]) == (413, "too_large")
    assert sum(map(len, read)) <= protocol.MAX_AGENT_API_BODY + len(chunk)
