"""haven-agent worker against real Redis: it runs the portal's signed tasks from its own
queue, refuses and logs unsigned or forged ones, loses nothing queued while it was down,
and reconnects by itself after the broker restarts."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import pytest
import redis
from celery import Celery, platforms
from celery.exceptions import SecurityError, SecurityWarning

from agents.dispatch import deliver, signed_message
from agents.runtime import worker as worker_module
from agents.runtime.tasks import PING
from agents.runtime.tasksig import AUTH_KWARG
from tests.agents.conftest import register_directly, write_registration
from tests.support.servers import free_port, port_open

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


class Worker:
    def __init__(self, config_dir: Path, log: Path):
        self.config_dir, self.log = config_dir, log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "HAVEN_AGENT_CONFIG_DIR": str(self.config_dir)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agents.runtime.cli", "worker", "--logfile", str(self.log)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log.with_suffix(".stderr"), "wb"),  # noqa: SIM115
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, needle: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return self.text()
            if self.process and self.process.poll() is not None:
                break
            time.sleep(0.1)
        stderr = self.log.with_suffix(".stderr")
        extra = stderr.read_text()[-3000:] if stderr.exists() else ""
        raise AssertionError(f"{needle!r} not in the worker log:\n{self.text()[-3000:]}\n{extra}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def machine(redis_broker, vault, alice, agent_env):
    machine, registration = register_directly(vault, alice, "web-01")
    write_registration(registration, agent_env)
    return machine, registration


@pytest.fixture
def worker(agent_env, tmp_path):
    running = Worker(agent_env, tmp_path / "worker.log")
    yield running
    running.stop()


@pytest.fixture
def sender(redis_broker):
    app = Celery("test-portal", broker=redis_broker)
    yield app
    app.close()


def result_of(redis_url: str, registration, task_id: str, timeout: float = 20) -> dict:
    admin = redis.Redis.from_url(redis_url)
    key = f"{registration.result_key_prefix}celery-task-meta-{task_id}"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            raw = admin.get(key)
            if raw:
                return json.loads(raw)
            time.sleep(0.1)
    finally:
        admin.close()
    raise AssertionError(f"no result for {task_id}")


def send_signed(sender, machine, registration, **kwargs) -> str:
    task_id = str(uuid.uuid4())
    message = signed_message(machine, PING, task_id, kwargs)
    deliver(registration.queue, PING, task_id, message, app=sender)
    return task_id


def test_it_runs_signed_tasks_including_those_queued_while_it_was_down(
    machine, worker, sender, redis_broker
):
    machine, registration = machine
    queued_before = send_signed(sender, machine, registration, note="queued while down")
    worker.start()
    result = result_of(redis_broker, registration, queued_before)
    assert result["status"] == "SUCCESS"
    assert result["result"]["pong"] is True and result["result"]["note"] == "queued while down"
    assert result["result"]["machine_id"] == str(machine.pk)
    later = send_signed(sender, machine, registration, note="live")
    assert result_of(redis_broker, registration, later)["result"]["note"] == "live"


@pytest.mark.skipif(os.geteuid() != 0, reason="Celery warns only when the worker runs as root")
def test_as_root_it_starts_without_celerys_root_warning_and_says_why_it_runs_so(
    machine, worker, sender, redis_broker
):
    machine, registration = machine
    worker.start()
    task_id = send_signed(sender, machine, registration, note="as root")
    assert result_of(redis_broker, registration, task_id)["status"] == "SUCCESS"
    said = worker.text() + worker.log.with_suffix(".stderr").read_text()
    assert "superuser privileges" not in said and "SecurityWarning" not in said
    assert "running as root, to read every file it backs up and restore owners" in said


def test_the_worker_imports_no_django_whatever_the_environment_names(agent_env):
    # A portal's host (or a test run) has DJANGO_SETTINGS_MODULE set; Celery's Django fix-up
    # would then import Django and the portal's apps into the agent.
    code = (
        "import sys\n"
        "from agents.runtime.worker import make_app\n"
        "from agents.runtime.config import Registration\n"
        "fields = dict.fromkeys(Registration.__dataclass_fields__, '')\n"
        "fields.update(broker_transport_options={}, grant={}, machine_id='m1', queue='agent.m1')\n"
        "fields['broker_url'] = 'redis://127.0.0.1:6379/4'\n"
        "make_app(Registration(**fields), None)\n"
        # (kombu's JSON imports django.utils.functional when Django is installed: not Django's
        # set-up, which is what the fix-up does)
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('portal', 'vaults', 'jobs')"
        " or m.startswith(('django.apps', 'django.conf', 'celery.fixups'))))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings"}
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[]"


@pytest.mark.skipif(os.geteuid() != 0, reason="Celery warns only when the worker runs as root")
def test_only_celerys_root_warning_is_dropped_and_only_for_json(monkeypatch):
    monkeypatch.delenv("C_FORCE_ROOT", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = Celery("json-only", accept_content=["json"])
        assert worker_module.root_warning_answered(app)
        platforms.check_privileges(app.conf.accept_content)
        warnings.warn(SecurityWarning("another security warning"), stacklevel=1)
    assert [str(w.message) for w in caught] == ["another security warning"]
    # Pickle accepted: nothing dropped, and Celery still refuses to start as root.
    pickle = Celery("pickle", accept_content=["json", "pickle"])
    assert not worker_module.root_warning_answered(pickle)
    with pytest.raises(SecurityError):
        platforms.check_privileges(pickle.conf.accept_content)


def test_it_refuses_and_logs_unsigned_and_forged_tasks(machine, worker, sender, redis_broker):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agents.runtime.tasksig import signed_bytes

    machine, registration = machine
    worker.start()

    unsigned = str(uuid.uuid4())
    sender.send_task(PING, kwargs={"note": "unsigned"}, task_id=unsigned, queue=registration.queue)
    worker.wait_for(f"REFUSED task {PING} [{unsigned}] is not signed by the portal")
    assert result_of(redis_broker, registration, unsigned)["status"] == "FAILURE"

    # Signed with a key that is not the portal's.
    forged = str(uuid.uuid4())
    issued_at, expires_at = "2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+00:00"
    data = signed_bytes(
        task=PING,
        task_id=forged,
        machine_id=str(machine.pk),
        args=[],
        kwargs={},
        issued_at=issued_at,
        expires_at=expires_at,
    )
    fake = base64.b64encode(Ed25519PrivateKey.generate().sign(data)).decode()
    sender.send_task(
        PING,
        kwargs={AUTH_KWARG: {"signature": fake, "issued_at": issued_at, "expires_at": expires_at}},
        task_id=forged,
        queue=registration.queue,
    )
    worker.wait_for(f"REFUSED task {PING} [{forged}] has a signature that does not verify")

    # A genuine message whose arguments were changed on the way.
    altered = str(uuid.uuid4())
    message = signed_message(machine, PING, altered, {"note": "original"})
    message["note"] = "changed"
    deliver(registration.queue, PING, altered, message, app=sender)
    worker.wait_for(f"REFUSED task {PING} [{altered}] has a signature that does not verify")

    # A genuine message for another machine, replayed onto this queue.
    replayed = str(uuid.uuid4())
    other = type(machine)(pk=uuid.uuid4(), vault=machine.vault, name="other")
    deliver(
        registration.queue, PING, replayed, signed_message(other, PING, replayed, {}), app=sender
    )
    worker.wait_for(f"REFUSED task {PING} [{replayed}] has a signature that does not verify")

    # The worker is still serving genuine work afterwards.
    ok = send_signed(sender, machine, registration, note="still fine")
    assert result_of(redis_broker, registration, ok)["status"] == "SUCCESS"
    for task_id in (unsigned, forged, altered, replayed):
        assert "pong (note=" not in worker.text().split(task_id)[-1].split("\n")[0]


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of our own, so the test may restart it (ACL users kept in an ACL file)."""
    binary = shutil.which("redis-server")
    if not binary:
        pytest.skip("redis-server is not installed")
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    (folder / "users.acl").write_text("user default on nopass ~* &* +@all\n")
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--aclfile",
        str(folder / "users.acl"),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]

    class Server:
        url = f"redis://127.0.0.1:{port}/0"

        def start(self):
            self.process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 10
            while not port_open("127.0.0.1", port):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

        def stop(self):
            self.process.terminate()
            self.process.wait(10)

    server = Server()
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


def test_it_reconnects_after_a_broker_restart(
    private_redis, settings, vault, alice, agent_env, worker
):
    settings.REDIS_URL = private_redis.url
    machine, registration = register_directly(vault, alice, "web-01")
    write_registration(registration, agent_env)
    admin = redis.Redis.from_url(private_redis.url)
    admin.execute_command("ACL", "SAVE")
    admin.close()
    sender = Celery("test-portal", broker=private_redis.url)
    worker.start()
    first = send_signed(sender, machine, registration, note="before restart")
    assert result_of(private_redis.url, registration, first)["status"] == "SUCCESS"

    private_redis.stop()
    time.sleep(1.0)
    private_redis.start()
    sender.close()
    sender = Celery("test-portal-again", broker=private_redis.url)
    after = send_signed(sender, machine, registration, note="after restart")
    assert result_of(private_redis.url, registration, after, timeout=60)["result"]["note"] == (
        "after restart"
    )
    sender.close()


def test_the_sweep_mutex_is_exclusive_and_never_frees_another_holders(redis_url):
    """The agent's Lua-free mutex (agents/runtime/redis_transport.py) on the real Redis."""
    from kombu.transport.redis import MutexHeld

    from agents.runtime.redis_transport import mutex

    client = redis.Redis.from_url(redis_url)
    name = f"haven-test-mutex-{uuid.uuid4()}"
    try:
        with mutex(client, name, 5), pytest.raises(MutexHeld), mutex(client, name, 5):
            pass
        assert not client.exists(name)
        # A holder that outlived its lock finds it taken by another: it leaves it alone.
        with mutex(client, name, 0.05):
            time.sleep(0.2)
            assert client.set(name, b"another holder", nx=True)
        assert client.get(name) == b"another holder"
    finally:
        client.delete(name)
        client.close()
