"""Support for end-to-end tests with real agents.

``agent_portal`` is like ``live_portal`` (tests/e2e/conftest.py) but picks the port first
and sets ``HAVEN_PUBLIC_URL``, ``REDIS_URL``, the portal's Celery broker and the storage
directories before the server process forks, so the server sees them too: storage grants
for the local backend point at the public URL, and machines get their own Redis ACL user,
which the embedded filesystem broker cannot give them. So even in the embedded pass these
tests run the portal's broker on Redis (its cache and channel layer stay embedded).

``installed_agent`` installs the agent once per session from the installer the portal
serves (built in-process: ``test_agent.py`` downloads it over HTTP), into a virtualenv with
a reused pip cache. ``agent_machines`` registers any number of machines from that one
installation, each with its own home, config directory (``HAVEN_AGENT_CONFIG_DIR``), cache,
passphrase file and ``haven-agent worker`` process against real Redis. Workers run in their
own process group; teardown stops them and kills whatever they forked, so no process is
left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.support import workers

REPO = Path(__file__).resolve().parents[2]
# Installs reuse this pip cache across runs (the autouse fixture moves HOME per test).
PIP_CACHE = Path(os.environ.get("HAVEN_TEST_PIP_CACHE", REPO / "var" / "pip-cache"))


def _application():
    from portal.asgi import application

    return application


@contextlib.contextmanager
def _portal_broker_on_redis(settings, monkeypatch, redis_url: str):
    """Point the portal's Celery app (already configured at import) at Redis, in this
    process and in the server forked from it: agent tasks must reach the agents' queues."""
    from portal.celery import app

    options = {"visibility_timeout": 3600}
    before = {key: app.conf[key] for key in ("broker_url", "broker_transport_options")}
    settings.CELERY_BROKER_URL = redis_url
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = options
    app.conf.update(broker_url=redis_url, broker_transport_options=options)
    # Connection pools made for the other broker must not be used, here or after.
    monkeypatch.setattr(app, "_pool", None)
    monkeypatch.setattr(app.amqp, "_producer_pool", None)
    try:
        yield
    finally:
        app.conf.update(before)
        app._pool = app.amqp._producer_pool = None


@pytest.fixture
def agent_portal(transactional_db, settings, monkeypatch, tmp_path, redis_url) -> str:
    from daphne.testing import DaphneProcess
    from django.db import connections

    from portal import realtime
    from tests.support.servers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings.HAVEN_PUBLIC_URL = url
    settings.HAVEN_INTERNAL_URL = url
    settings.REDIS_URL = redis_url
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.SECONDARY_STORAGE_DIR = tmp_path / "storage-secondary"
    monkeypatch.setattr(realtime, "serving_pid", None)
    with _portal_broker_on_redis(settings, monkeypatch, redis_url):
        connections.close_all()
        server = DaphneProcess("127.0.0.1", _application, port=port)
        server.daemon = True
        server.start()
        if not server.ready.wait(30):
            server.terminate()
            pytest.fail("the live portal did not start")
        try:
            yield url
        finally:
            server.terminate()
            server.join(10)
            if server.is_alive():
                server.kill()
                server.join(5)


def signed_in_session(base_url: str, user) -> requests.Session:
    """A requests session carrying ``user``'s session cookie and a CSRF token."""
    from django.test import Client

    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    session = requests.Session()
    session.trust_env = False
    session.cookies.set("sessionid", client.cookies["sessionid"].value)
    session.get(base_url + "/", timeout=10).raise_for_status()
    token = session.cookies.get("csrftoken")
    if token:
        session.headers["X-CSRFToken"] = token
    session.headers["Referer"] = base_url + "/"
    return session


def download_credentials(base_url: str, user, vault, folder: Path) -> Path:
    """Download vault credentials as ``user`` would (Prepare infrastructure), over HTTP."""
    session = signed_in_session(base_url, user)
    answer = session.post(
        f"{base_url}/vaults/{vault.pk}/credentials/download/",
        data={"agent_ready": "on"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text[:500]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{vault.name}.VaultCredentials"
    path.write_bytes(answer.content)
    return path


def run(args, env, timeout=120) -> subprocess.CompletedProcess:
    """Run a command as the machine would: from its home, with only its environment."""
    return subprocess.run(
        [str(a) for a in args],
        env=env,
        cwd=env["HOME"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def machine_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "HAVEN_AGENT_CONFIG_DIR": str(home / "haven-agent-config"),
        "PIP_CACHE_DIR": str(PIP_CACHE),
        "PYTHON": sys.executable if sys.version_info >= (3, 11) else "python3",
    }


@pytest.fixture(scope="session")
def installed_agent(tmp_path_factory) -> Path:
    """``haven-agent`` installed by the portal's installer into a fresh virtualenv: once per
    run, shared by pytest-xdist's workers (the first to get here installs, under a lock, and
    the others use its installation; the tests only run it)."""
    root = workers.run_dir(tmp_path_factory)
    where = root / "haven-agent-install"
    agent = where / "agent" / "bin" / "haven-agent"
    with workers.exclusive(root / "haven-agent-install.lock"):
        if not (where / "installed").exists():
            shutil.rmtree(where, ignore_errors=True)  # a worker's failed attempt
            _install_agent(where)
            (where / "installed").touch()
    return agent


def _install_agent(where: Path) -> None:
    from agents.installer import build_installer

    where.mkdir()
    script = where / "haven-agent-install.sh"
    script.write_bytes(build_installer(portal_url="http://127.0.0.1"))
    home = where / "home"
    home.mkdir()
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    prefix = where / "agent"
    installed = run(
        ["sh", script, "--prefix", prefix, "--bin-dir", where / "bin", "--python", "python3"],
        machine_env(home),
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr


@dataclass
class AgentMachine:
    """One registered machine: its home, environment, registration and worker."""

    name: str
    agent: Path
    home: Path
    env: dict[str, str]
    passphrase_file: Path
    machine_id: str = ""
    process: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = self.home / "worker.log"

    def run(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return run([self.agent, *args], self.env, timeout=timeout)

    def ok(self, *args, timeout: float = 120) -> str:
        """Run ``haven-agent ARGS``; fail the test with its output unless it succeeds."""
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"haven-agent {' '.join(map(str, args))}:\n" + (
            done.stdout + done.stderr
        )
        return done.stdout

    @property
    def model(self):
        from agents.models import Machine

        return Machine.objects.get(pk=self.machine_id)

    def log_text(self, start: int = 0) -> str:
        if not self.log.exists():
            return "(no worker log)"
        return self.log.read_bytes()[start:].decode(errors="replace")

    def stderr_text(self) -> str:
        """What the worker and its forked processes wrote to stderr (the worker logs to
        ``log``; a chunking or writer process that dies of an exception prints its traceback
        here), for failure messages."""
        stderr = self.log.with_suffix(".stderr")
        if not stderr.exists() or not stderr.stat().st_size:
            return ""
        return "\n--- the worker's stderr ---\n" + stderr.read_bytes().decode(errors="replace")

    def start_worker(self, timeout: float = 60) -> None:
        """Start ``haven-agent worker``; returns once it consumes and its heartbeat arrived."""
        from agents.models import Machine

        Machine.objects.filter(pk=self.machine_id).update(last_seen_at=None)
        start = self.log.stat().st_size if self.log.exists() else 0  # a restart appends
        with open(self.log.with_suffix(".stderr"), "ab") as stderr:
            self.process = subprocess.Popen(
                [str(self.agent), "worker", "--logfile", str(self.log)],
                env=self.env,
                cwd=self.home,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group, with the engine's children
            )
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text(start)
            seen = Machine.objects.filter(pk=self.machine_id, last_seen_at__isnull=False)
            if "ready." in log and seen.exists():
                return
            assert self.process.poll() is None, (
                f"the worker of {self.name} died:\n{log}{self.stderr_text()}"
            )
            if "invalid username-password pair" in log:
                log += (
                    "\n(The machine's Redis user is gone: did another test run on the same "
                    "Redis delete it?)"
                )
            assert time.monotonic() < deadline, f"the worker of {self.name} did not start:\n{log}"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the worker and everything it forked, as a crash or power cut would."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """Ask the worker to stop; kill its process group if it does not within seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        # Whatever is left in the group (the worker, forked chunkers) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.process = None


class AgentMachines:
    """Registers machines to a vault from the one installation and keeps their workers."""

    def __init__(self, portal_url: str, agent: Path, root: Path):
        self.portal_url = portal_url
        self.agent = agent
        self.root = root
        self.machines: list[AgentMachine] = []

    def register(
        self,
        name: str,
        credentials: Path,
        *,
        bandwidth_limit: str = "",
        start: bool = True,
        home_name: str = "",
        replace: bool = False,
    ) -> AgentMachine:
        """``home_name`` when two machines have the same name (a new machine registered
        under an old one's name, ``replace`` with ``--replace``)."""
        home = self.root / (home_name or name)
        home.mkdir(parents=True)
        machine = AgentMachine(
            name=name,
            agent=self.agent,
            home=home,
            env=machine_env(home),
            passphrase_file=home / "secrets" / "haven-passphrase.txt",
        )
        self.machines.append(machine)
        configure = ["configure", "--cache-dir", home / "cache"]
        if bandwidth_limit:
            configure += ["--bandwidth-limit", bandwidth_limit]
        machine.ok(*configure)
        machine.ok(
            "register",
            "--vault-credentials",
            credentials,
            "--machine-name",
            name,
            "--generate-passphrase",
            machine.passphrase_file,
            *(["--replace"] if replace else []),
        )
        registration = home / "haven-agent-config" / "registration.json"
        machine.machine_id = json.loads(registration.read_text())["machine_id"]
        if start:
            machine.start_worker()
        return machine

    def stop_all(self) -> None:
        for machine in self.machines:
            machine.stop()


@dataclass
class VaultOwner:
    user: object
    vault: object
    credentials: Path


@pytest.fixture
def vault_owner(agent_portal, tmp_path) -> VaultOwner:
    """alice, Owner of a subscription with a ready vault, and the vault's credentials file
    downloaded from the live portal."""
    from portal import services
    from tests.e2e.conftest import make_user
    from vaults.models import Vault

    alice = make_user("alice", first_name="Alice", email="alice@example.com")
    subscription = services.subscription_create(name="Contoso Production", owner=alice)
    group = services.resource_group_create(
        subscription=subscription, name="rg-backup-west", location="West Europe"
    )
    vault = Vault.objects.create(
        subscription=subscription,
        resource_group=group,
        name="vault-e2e",
        location="West Europe",
        state=Vault.State.READY,
        container="vault-e2e",
    )
    alice.notifications.all().delete()
    credentials = download_credentials(agent_portal, alice, vault, tmp_path / "downloads")
    return VaultOwner(user=alice, vault=vault, credentials=credentials)


@pytest.fixture
def agent_machines(agent_portal, installed_agent, tmp_path):
    machines = AgentMachines(agent_portal, installed_agent, tmp_path / "machines")
    try:
        yield machines
    finally:
        machines.stop_all()
