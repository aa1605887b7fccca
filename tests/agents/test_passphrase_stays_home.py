"""The passphrase never leaves the machine: every HTTP request (portal API and storage) and
every broker command during registration, a dispatched task and a backup is captured, and
none carries the passphrase, the master keys or the key derived from the passphrase."""

from __future__ import annotations

import base64
import json
import threading

import pytest
import redis
import requests

from agents.models import Machine
from agents.runtime import cli
from agents.runtime import config as agent_config
from tests.agents.conftest import issue_credentials

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
PASSPHRASE = "Tr0ub4dor&3 is not a passphrase, this is"


class Capture:
    def __init__(self):
        self.chunks: list[bytes] = []
        self.lock = threading.Lock()

    def add(self, *parts) -> None:
        with self.lock:
            for part in parts:
                if part is None:
                    continue
                if isinstance(part, str):
                    part = part.encode("utf-8", "surrogateescape")
                elif not isinstance(part, bytes | bytearray | memoryview):
                    part = repr(part).encode()
                self.chunks.append(bytes(part))

    def blob(self) -> bytes:
        return b"\n".join(self.chunks)


@pytest.fixture
def capture(monkeypatch, redis_broker):
    seen = Capture()
    real_send = requests.adapters.HTTPAdapter.send

    def send(self, request, *args, **kwargs):
        body = request.body
        if hasattr(body, "read"):  # a stream: the test never sends one, but be sure
            raise AssertionError("unexpected streamed body")
        seen.add(request.method, request.url, json.dumps(dict(request.headers)), body)
        return real_send(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)

    from kombu.messaging import Producer

    real_publish = Producer.publish

    def publish(self, body, *args, **kwargs):
        seen.add(json.dumps(body, default=repr), json.dumps(kwargs, default=repr))
        return real_publish(self, body, *args, **kwargs)

    monkeypatch.setattr(Producer, "publish", publish)

    # Every command any client sends to the broker, as the server saw it.
    admin = redis.Redis.from_url(redis_broker)
    monitor = admin.monitor()
    stop = threading.Event()
    monitor_conn = monitor.__enter__()

    def watch():
        while not stop.is_set():
            try:
                seen.add(monitor_conn.next_command()["command"])
            except Exception:
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    yield seen
    stop.set()
    admin.close()


def forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
    ]


def test_nothing_that_decrypts_leaves_the_machine(
    live_server, settings, vault, alice, tmp_path, capture, agent_env
):
    from agents.dispatch import deliver, signed_message
    from agents.runtime.blobstore import open_grant
    from agents.runtime.engine.backup import run_backup
    from agents.runtime.engine.crypto import derive_kek
    from agents.runtime.engine.repository import Repository
    from agents.runtime.tasks import PING

    settings.HAVEN_PUBLIC_URL = live_server.url
    creds = tmp_path / "creds"
    creds.write_bytes(issue_credentials(vault, alice))
    secret_file = tmp_path / "passphrase"
    secret_file.write_text(PASSPHRASE)

    assert (
        cli.main(
            [
                "register",
                "--vault-credentials",
                str(creds),
                "--passphrase-file",
                str(secret_file),
                "--machine-name",
                "web-01",
            ]
        )
        == 0
    )
    registration = agent_config.require_registration()
    machine = Machine.objects.get()

    # A signed task through the broker, as the jobs app will send backups.
    from celery import Celery

    sender = Celery("portal-under-test", broker=settings.REDIS_URL)
    deliver(
        registration.queue, PING, "t-1", signed_message(machine, PING, "t-1", {"x": 1}), app=sender
    )
    sender.close()

    # A backup-like flow: open the repository with the passphrase, back up a folder.
    source = tmp_path / "data"
    source.mkdir()
    for i in range(5):
        (source / f"file-{i}.txt").write_bytes(f"precious data {i}\n".encode() * 500)
    store = open_grant(registration.grant)
    repo = Repository.open(store, PASSPHRASE)
    result = run_backup(repo, sources=[str(source)], workers=1, cache_dir=tmp_path / "cache")
    assert result is not None
    assert cli.main(["check"]) == 0

    kdf = repo.kdf_params()
    secrets_to_find = {
        "passphrase": forms(PASSPHRASE.encode()),
        "data key": forms(repo.keys.data_key),
        "chunk-id key": forms(repo.keys.id_key),
        "key derived from the passphrase": forms(derive_kek(PASSPHRASE, kdf)),
    }
    store.close()
    captured = capture.blob()
    assert len(captured) > 10_000, "the capture saw the traffic"
    assert b"/api/agent/register/" in captured and b"keys/" in captured
    assert registration.queue.encode() in captured
    assert f"LPUSH {registration.queue}".encode() in captured, "the broker monitor saw it"
    for name, variants in secrets_to_find.items():
        for variant in variants:
            assert variant not in captured, f"the {name} left the machine"
