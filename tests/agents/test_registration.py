"""haven-agent register against a live portal: the happy path, the files it keeps, and
every way it is refused — each with its own message and nothing half-registered."""

from __future__ import annotations

import json
import platform
import stat

import pytest

from agents.models import Machine, MachineToken
from agents.runtime import cli
from agents.runtime import config as agent_config
from tests.agents.conftest import ACL_BASELINE, ACL_MADE, issue_credentials
from tests.support.servers import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_broker")]

PASSPHRASE = "correct horse battery staple 42"


@pytest.fixture
def portal(live_server, settings, agent_env):
    settings.HAVEN_PUBLIC_URL = live_server.url
    return live_server.url


@pytest.fixture
def creds_file(tmp_path, vault, alice, portal):
    path = tmp_path / "vault-one.VaultCredentials"
    path.write_bytes(issue_credentials(vault, alice))
    return path


@pytest.fixture
def passphrase_file(tmp_path):
    path = tmp_path / "passphrase.txt"
    path.write_text(PASSPHRASE + "\n")
    return path


def acl_users(redis_url) -> set[str]:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        users = {u for u in client.acl_users() if u.startswith("haven-agent-")}
        return (users - ACL_BASELINE) & ACL_MADE  # not another suite's, on a shared Redis
    finally:
        client.close()


def register(*args) -> int:
    return cli.main(["register", *map(str, args)])


def assert_nothing_registered(redis_url, agent_env):
    assert not Machine.objects.filter(unregistered_at__isnull=True).exists()
    assert not MachineToken.objects.filter(revoked_at__isnull=True).exists()
    assert acl_users(redis_url) == set()
    assert not (agent_env / agent_config.REGISTRATION_FILE).exists()


def test_it_registers_and_keeps_its_files_private(
    creds_file, tmp_path, agent_env, redis_broker, capsys
):
    secret = tmp_path / "keep" / "passphrase.txt"
    code = register(
        "--vault-credentials",
        creds_file,
        "--machine-name",
        "web-01",
        "--generate-passphrase",
        secret,
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "lose" in out.out and "Registered machine 'web-01'" in out.out

    machine = Machine.objects.get()
    assert machine.name == "web-01" and machine.broker_username == f"haven-agent-{machine.pk}"
    # The OS in words, as /etc/os-release names it, not Python's platform string.
    assert machine.os_name == platform.freedesktop_os_release()["PRETTY_NAME"]
    assert acl_users(redis_broker) == {machine.broker_username}
    assert stat.S_IMODE(agent_env.stat().st_mode) == 0o700
    registration_file = agent_env / agent_config.REGISTRATION_FILE
    assert stat.S_IMODE(registration_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    generated = secret.read_text().strip()
    assert len(generated) >= 16 and generated not in registration_file.read_text()
    assert agent_config.load_settings().passphrase_file == str(secret.resolve())
    saved = json.loads(registration_file.read_text())
    assert saved["machine_id"] == str(machine.pk) and saved["queue"] == f"agent.{machine.pk}"

    # The repository is initialised in the machine's container: the key is wrapped there.
    from vaults.storage import primary_account

    with primary_account().store(machine.container) as store:
        names = [info.name for info in store.list()]
    assert "config" in names and any(n.startswith("keys/") for n in names)

    assert cli.main(["status"]) == 0
    status = capsys.readouterr().out
    assert "Registered to vault 'vault-one'" in status and machine.vault.subscription.name in status
    assert saved["portal_url"] in status and saved["token"] not in status


def test_registering_twice_needs_replace(creds_file, passphrase_file, redis_broker, capsys):
    assert (
        register(
            "--vault-credentials",
            creds_file,
            "--machine-name",
            "web-01",
            "--passphrase-file",
            passphrase_file,
        )
        == 0
    )
    first = Machine.objects.get()
    capsys.readouterr()

    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 1
    assert "already registered as 'web-01'" in capsys.readouterr().err
    assert Machine.objects.count() == 1

    assert (
        register(
            "--vault-credentials",
            creds_file,
            "--machine-name",
            "web-01",
            "--passphrase-file",
            passphrase_file,
            "--replace",
        )
        == 0
    )
    first.refresh_from_db()
    second = Machine.objects.get(unregistered_at__isnull=True)
    assert first.unregistered_at is not None and second.pk != first.pk
    assert not first.tokens.filter(revoked_at__isnull=True).exists()
    assert acl_users(redis_broker) == {second.broker_username}


def test_machine_names_are_unique_per_vault(
    creds_file, passphrase_file, tmp_path, monkeypatch, capsys
):
    assert (
        register(
            "--vault-credentials",
            creds_file,
            "--machine-name",
            "web-01",
            "--passphrase-file",
            passphrase_file,
        )
        == 0
    )
    # Another machine (its own config directory) asks for the same name.
    monkeypatch.setenv("HAVEN_AGENT_CONFIG_DIR", str(tmp_path / "other-machine"))
    capsys.readouterr()
    assert (
        register(
            "--vault-credentials",
            creds_file,
            "--machine-name",
            "WEB-01",
            "--passphrase-file",
            passphrase_file,
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "already has a machine named 'WEB-01'" in err and "--replace" in err
    assert Machine.objects.count() == 1


def _resign(creds_file, **changes):
    """A credentials file with changed fields, signed again by this portal (valid)."""
    from portal import signing
    from vaults.credentials import canonical

    document = json.loads(creds_file.read_bytes())
    document["credentials"].update(changes)
    document["signature"] = signing.sign(canonical(document["credentials"]))
    creds_file.write_text(json.dumps(document))


def test_expired_credentials_are_refused(
    creds_file, passphrase_file, redis_broker, agent_env, capsys
):
    _resign(creds_file, expires_at="2020-01-01T00:00:00Z")
    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 1
    err = capsys.readouterr().err
    assert "(expired)" in err and "expired at 2020-01-01" in err
    assert_nothing_registered(redis_broker, agent_env)


def test_expired_credentials_on_the_portal_are_refused(
    creds_file, passphrase_file, redis_broker, agent_env, capsys
):
    from django.utils import timezone

    from vaults.models import VaultCredential

    VaultCredential.objects.update(expires_at=timezone.now())
    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 1
    assert "(expired)" in capsys.readouterr().err
    assert_nothing_registered(redis_broker, agent_env)


def test_edited_credentials_are_refused(
    creds_file, passphrase_file, redis_broker, agent_env, capsys
):
    document = json.loads(creds_file.read_bytes())
    document["credentials"]["vault_name"] = "someone-elses-vault"
    creds_file.write_text(json.dumps(document))
    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 1
    err = capsys.readouterr().err
    assert "(tampered)" in err and "edited" in err
    assert_nothing_registered(redis_broker, agent_env)


def test_revoked_credentials_are_refused(
    creds_file, passphrase_file, redis_broker, agent_env, alice, capsys
):
    from vaults.credentials import credentials_revoke
    from vaults.models import VaultCredential

    credentials_revoke(credential=VaultCredential.objects.get(), user=alice)
    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 1
    err = capsys.readouterr().err
    assert "(revoked)" in err and "revoked" in err
    assert_nothing_registered(redis_broker, agent_env)


def test_credentials_of_another_portal_are_refused(
    creds_file, passphrase_file, redis_broker, agent_env, capsys
):
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vaults.credentials import canonical

    other = Ed25519PrivateKey.generate()
    raw = other.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    document = json.loads(creds_file.read_bytes())
    document["credentials"]["portal_key_fingerprint"] = hashlib.sha256(raw).hexdigest()[:16]
    document["credentials"]["portal_public_key"] = base64.b64encode(raw).decode()
    document["signature"] = base64.b64encode(
        other.sign(canonical(document["credentials"]))
    ).decode()
    creds_file.write_text(json.dumps(document))
    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 1
    err = capsys.readouterr().err
    assert "(portal_identity)" in err and "another Haven portal" in err
    assert_nothing_registered(redis_broker, agent_env)


def test_the_portal_itself_refuses_foreign_credentials(creds_file, portal):
    import requests

    document = json.loads(creds_file.read_bytes())
    document["credentials"]["portal_key_fingerprint"] = "0" * 16
    answer = requests.post(
        portal + "/api/agent/register/",
        json={"credentials": json.dumps(document), "machine_name": "web-01"},
        timeout=10,
    )
    assert answer.status_code == 403 and answer.json()["error"] == "foreign"
    assert not Machine.objects.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("fifteen chars!!", "has 15 characters; it needs at least 16"),
        ("pässphrase with an umlaut in it", "printable ASCII"),
    ],
)
def test_weak_passphrases_are_refused(
    creds_file, tmp_path, redis_broker, agent_env, capsys, content, message
):
    path = tmp_path / "weak.txt"
    path.write_bytes(content.encode("utf-8"))
    assert register("--vault-credentials", creds_file, "--passphrase-file", path) == 1
    assert message in capsys.readouterr().err
    assert_nothing_registered(redis_broker, agent_env)


def test_an_unreachable_portal_is_named(
    tmp_path, passphrase_file, redis_broker, agent_env, capsys, vault, alice, settings
):
    settings.HAVEN_PUBLIC_URL = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "creds"
    path.write_bytes(issue_credentials(vault, alice))
    assert register("--vault-credentials", path, "--passphrase-file", passphrase_file) == 1
    err = capsys.readouterr().err
    assert "cannot reach the portal" in err and "connection refused" in err
    assert_nothing_registered(redis_broker, agent_env)


def test_an_unreachable_broker_rolls_back(
    creds_file, passphrase_file, redis_broker, agent_env, settings, capsys
):
    settings.HAVEN_AGENT_BROKER_URL = f"redis://127.0.0.1:{free_port()}/15"
    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 1
    err = capsys.readouterr().err
    assert "cannot reach the broker" in err and "Nothing was registered" in err
    assert not Machine.objects.exists()
    assert_nothing_registered(redis_broker, agent_env)


def test_unreachable_storage_rolls_back(
    creds_file, passphrase_file, redis_broker, agent_env, monkeypatch, capsys
):
    from agents import services

    real_issue = services.machine_grant_issue

    def grant_nobody_can_reach(*, machine):
        grant = real_issue(machine=machine)
        return {
            "kind": "haven-http",
            "container": machine.container,
            "base_url": f"http://127.0.0.1:{free_port()}/storage/{machine.container}/",
            "token": "x",
            "permissions": "rcwl",
            "expires_at": grant["expires_at"],
        }

    monkeypatch.setattr(services, "machine_grant_issue", grant_nobody_can_reach)
    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 1
    err = capsys.readouterr().err
    assert "storage" in err and "Nothing was registered" in err
    assert not Machine.objects.exists()
    assert_nothing_registered(redis_broker, agent_env)


def test_check_reports_each_service(creds_file, passphrase_file, capsys):
    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 0
    capsys.readouterr()
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    for name in (
        "portal API",
        "clock",
        "machine registration",
        "broker",
        "storage",
        "cache location",
    ):
        assert f"[PASS] {name}:" in out
    assert "All checks passed." in out


def test_check_before_registration_uses_the_credentials(creds_file, capsys):
    assert cli.main(["check", "--vault-credentials", str(creds_file)]) == 0
    out = capsys.readouterr().out
    assert "[PASS] portal API" in out and "[PASS] clock" in out
    assert "broker and storage are checked after registration" in out


def test_the_heartbeat_marks_online_and_renews_a_grant_near_expiry(creds_file, passphrase_file):
    from datetime import UTC, datetime, timedelta

    from agents.runtime.portal_api import PortalClient
    from agents.runtime.worker import Heartbeat

    assert register("--vault-credentials", creds_file, "--passphrase-file", passphrase_file) == 0
    registration = agent_config.require_registration()
    registration.grant["expires_at"] = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    client = PortalClient(registration.portal_url, token=registration.token)
    heartbeat = Heartbeat(client, registration=registration)
    assert heartbeat.beat()
    machine = Machine.objects.get()
    assert machine.is_online()
    saved = agent_config.require_registration()
    renewed = datetime.fromisoformat(saved.grant["expires_at"])
    assert renewed > datetime.now(UTC) + timedelta(hours=20)


def test_it_asks_for_what_is_missing_when_interactive(creds_file, monkeypatch, capsys):
    answers = iter([str(creds_file), "asked-name", "n"])
    typed = iter(["too short", PASSPHRASE, PASSPHRASE])
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    monkeypatch.setattr(cli, "_ask", lambda question: next(answers))
    monkeypatch.setattr(cli.getpass, "getpass", lambda prompt: next(typed))
    assert cli.main(["register"]) == 0
    out = capsys.readouterr().out
    assert "needs at least 16" in out and "lose" in out
    assert "configure --passphrase-file" in out
    assert Machine.objects.get().name == "asked-name"


def test_a_failed_registration_that_wrote_to_storage_is_unregistered_not_deleted(
    creds_file, redis_broker, agent_env, tmp_path
):
    """The portal refuses to roll back a registration whose container holds a blob; the
    agent then unregisters it: the blob stays, the token stops working."""
    from agents.runtime import register as reg
    from agents.runtime.config import Settings
    from vaults.storage import primary_account

    def init_then_fail(store, passphrase):
        store.put("keys/written-before-the-failure", b"wrapped key")
        raise reg.StorageUnreachable("the disk filled up")

    prepared = reg.prepare(creds_file, Settings())
    with pytest.raises(reg.StorageUnreachable) as failed:
        reg.enroll(
            prepared,
            passphrase=PASSPHRASE,
            settings=Settings(),
            machine_name="web-01",
            directory=tmp_path / "agent-config",
            repository_init=init_then_fail,
        )
    assert "unregistered; what it wrote to storage is kept" in str(failed.value)
    machine = Machine.objects.get()
    assert machine.unregistered_at is not None
    assert not MachineToken.objects.filter(machine=machine, revoked_at__isnull=True).exists()
    store = primary_account().store(machine.container)
    assert [b.name for b in store.list()] == ["keys/written-before-the-failure"]
    store.close()


def test_a_rolled_back_registration_gives_a_single_use_file_back(
    tmp_path, vault, alice, portal, passphrase_file, redis_broker, settings, capsys
):
    from vaults.credentials import credentials_issue

    _name, content, record = credentials_issue(vault=vault, issued_by=alice, single_use=True)
    path = tmp_path / "once.VaultCredentials"
    path.write_bytes(content)
    settings.HAVEN_AGENT_BROKER_URL = f"redis://127.0.0.1:{free_port()}/15"
    assert register("--vault-credentials", path, "--passphrase-file", passphrase_file) == 1
    assert "Nothing was registered" in capsys.readouterr().err
    record.refresh_from_db()
    assert record.used_at is None and record.used_by_machine is None
