"""End to end: download the agent installer and vault credentials from a live portal over
HTTP, install the agent into a fresh virtualenv (pip from PyPI), check, register, start
the worker against real Redis, see the server Online in Chromium, run a signed task on
it, then unregister it in the browser and watch the agent lose access."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from playwright.sync_api import expect

from agents.runtime.version import __version__
from tests.e2e._agent_support import PIP_CACHE, agent_portal, signed_in_session  # noqa: F401
from tests.e2e.conftest import make_user, sign_in_with_cookie

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run(args, env, timeout=120):
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


@pytest.fixture
def owner_and_vault(transactional_db):
    from portal import services
    from vaults.models import Vault

    alice = make_user("alice", first_name="Alice")
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
    return alice, vault


def test_install_register_and_see_the_server_online(
    agent_portal,  # noqa: F811 - the fixture imported above
    owner_and_vault,
    page,
    tmp_path,
    redis_url,
    screenshot,
):
    from agents.models import Machine

    alice, vault = owner_and_vault
    session = signed_in_session(agent_portal, alice)

    # Download agent (Prepare infrastructure's link) and vault credentials, over HTTP.
    installer = session.get(agent_portal + "/machines/agent/installer/", timeout=30)
    assert installer.status_code == 200
    script = tmp_path / "haven-agent-install.sh"
    script.write_bytes(installer.content)
    answer = session.post(
        f"{agent_portal}/vaults/{vault.pk}/credentials/download/",
        data={"agent_ready": "on"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text[:500]
    creds = tmp_path / "downloads" / "vault-e2e.VaultCredentials"
    creds.parent.mkdir()
    creds.write_bytes(answer.content)

    # A fresh "machine": its own home, config directory and virtualenv.
    home = tmp_path / "machine-home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "HAVEN_AGENT_CONFIG_DIR": str(home / "haven-agent-config"),
        "PIP_CACHE_DIR": str(PIP_CACHE),
        "PYTHON": sys.executable if sys.version_info >= (3, 11) else "python3",
    }
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    prefix, bin_dir = home / "agent", home / "bin"
    installed = run(
        [
            "sh",
            script,
            "--prefix",
            prefix,
            "--bin-dir",
            bin_dir,
            "--cache-dir",
            home / "cache",
            "--python",
            "python3",
        ],
        env,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    agent = bin_dir / "haven-agent"
    assert agent.is_symlink() and (prefix / "bin" / "python").exists()
    # The installed agent is the package from the installer, not this checkout.
    where = run(
        [
            prefix / "bin" / "python",
            "-c",
            "import agents.runtime, sys; print(agents.runtime.__file__)",
        ],
        env,
    )
    assert str(prefix) in where.stdout

    checked = run([agent, "check", "--vault-credentials", creds], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "[PASS] portal API" in checked.stdout

    secret = home / "secrets" / "haven-passphrase.txt"
    registered = run(
        [
            agent,
            "register",
            "--vault-credentials",
            creds,
            "--machine-name",
            "e2e-server",
            "--generate-passphrase",
            secret,
        ],
        env,
    )
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert "If you lose" in registered.stdout and oct(secret.stat().st_mode)[-3:] == "600"
    status = run([agent, "status"], env)
    assert f"Registered to vault 'vault-e2e' on portal {agent_portal}" in status.stdout
    assert run([agent, "check"], env).returncode == 0

    machine = Machine.objects.get(name="e2e-server")
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [str(agent), "worker", "--logfile", str(log)],
        env=env,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            machine.refresh_from_db()
            if machine.last_seen_at and log.exists() and "ready." in log.read_text():
                break
            assert worker.poll() is None, log.read_text() if log.exists() else "worker died"
            time.sleep(0.2)
        assert machine.last_seen_at is not None, "no heartbeat reached the portal"

        # The portal shows the server Online, with its agent version.
        page.set_default_timeout(15_000)
        sign_in_with_cookie(page, agent_portal, alice)
        page.goto(f"{agent_portal}/machines/vault/{vault.pk}/")
        row = page.locator("tr", has_text="e2e-server")
        expect(row.locator(".machine-status")).to_have_text("Online")
        expect(row.locator(".agent-version")).to_contain_text(__version__)
        expect(row).not_to_contain_text("Update available")
        screenshot("agent-protected-servers")

        # A task signed by the portal runs on the machine.
        from celery import Celery

        from agents.dispatch import deliver, signed_message
        from agents.runtime.tasks import PING

        sender = Celery("e2e-portal", broker=redis_url)
        task_id = str(uuid.uuid4())
        deliver(
            machine.queue,
            PING,
            task_id,
            signed_message(machine, PING, task_id, {"note": "e2e"}),
            app=sender,
        )
        sender.close()
        import redis

        admin = redis.Redis.from_url(redis_url)
        key = f"agent.{machine.pk}.celery-task-meta-{task_id}"
        deadline = time.monotonic() + 30
        while not admin.get(key) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(admin.get(key))["result"]["note"] == "e2e"
        admin.close()

        # Unregister in the portal: the agent loses access at once.
        page.goto(f"{agent_portal}/machines/{machine.pk}/")
        page.locator("#unregister-machine").click()
        page.locator("#id_confirm_name").fill("e2e-server")
        page.get_by_role("button", name="Unregister").click()
        expect(page.locator(".messages")).to_contain_text("was unregistered")
        expect(page.locator("tr", has_text="e2e-server")).to_have_count(0)
        after = run([agent, "check"], env)
        assert after.returncode == 1
        assert "[FAIL] machine registration" in after.stdout and "[FAIL] broker" in after.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
