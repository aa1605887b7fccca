"""Recovery fixtures: a registered agent config, two machines' repositories in local
directories (this one, "web-01", and another of the vault, "db-01"), and a fake portal."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from agents.runtime import config
from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.engine import ChunkerParams, Repository, run_backup
from agents.runtime.recovery import source as src

FAST_KDF = {"n": 2**10, "r": 8, "p": 1}
SMALL_CHUNKS = ChunkerParams(min_size=4 * 1024, avg_size=16 * 1024, max_size=64 * 1024)
PASSPHRASE = "correct horse battery staple"
OTHER_PASSPHRASE = "another machine's own passphrase"
OWN_ID, OTHER_ID = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def write_random(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def backup(repo, src_dir, **kw):
    kw.setdefault("pack_size", 256 * 1024)
    kw.setdefault("hostname", "web-01")
    return run_backup(repo, sources=[src_dir], **kw)


class FakePortal:
    """Answers the agent API calls recovery makes; records every call."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict | None]] = []
        self.answers: dict[str, dict] = {}
        # recovery/grant/ answers by the name or id asked for (else the two machines')
        self.grant_answers: dict[str, dict] = {}
        self.uploads: dict[str, bytes] = {}
        self.cancel_after: int | None = None
        self.progress = 0

    def get(self, path: str) -> dict:
        self.calls.append(("GET", path, None))
        return self.answers.get(path, {})

    def post(self, path: str, payload: dict | None = None) -> dict:
        self.calls.append(("POST", path, payload))
        if path == "recovery/grant/":
            ref = payload.get("source_machine_id") or payload.get("source_machine")
            if ref in self.grant_answers:
                return self.grant_answers[ref]
            if ref in (OWN_ID, "web-01"):
                return {"grant": {"kind": "test"}, "machine": {"id": OWN_ID, "name": "web-01"}}
            if ref not in (OTHER_ID, "db-01"):
                from agents.runtime.portal_api import PortalRefused

                raise PortalRefused(404, "not_found", "No such machine in this vault.")
            return {"grant": {"kind": "test"}, "machine": {"id": OTHER_ID, "name": "db-01"}}
        if path.endswith("/progress/"):
            self.progress += 1
            return {"cancel": self.cancel_after is not None and self.progress >= self.cancel_after}
        return self.answers.get(path, {"ok": True, "status": "running"})

    def upload(self, path: str, fileobj, size: int) -> dict:
        self.uploads[path] = fileobj.read()
        assert len(self.uploads[path]) == size
        return {"ok": True}

    def posted(self, prefix: str) -> list[dict]:
        return [p for m, path, p in self.calls if m == "POST" and path.startswith(prefix)]

    def close(self):
        pass


@pytest.fixture
def agent_config(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "agent-config"
    monkeypatch.setenv("HAVEN_AGENT_CONFIG_DIR", str(directory))
    registration = config.Registration(
        portal_url="http://portal.invalid", portal_public_key="", portal_fingerprint="",
        subscription_id="s", subscription_name="s", resource_group="rg", vault_id="v",
        vault_name="vault", machine_id=OWN_ID, machine_name="web-01", token="hvn_x",
        broker_url="", grant={"kind": "test", "expires_at": "2999-01-01T00:00:00+00:00"},
    )  # fmt: skip
    config.save_registration(registration)
    (directory / "passphrase").write_text(PASSPHRASE + "\n")
    os.chmod(directory / "passphrase", 0o600)
    return directory


@pytest.fixture
def stores(tmp_path, monkeypatch) -> dict[str, LocalDirectoryStore]:
    """Each machine's container; ``source.open_store`` opens them instead of a grant."""
    found = {
        OWN_ID: LocalDirectoryStore(tmp_path / "storage" / "own", create=True),
        OTHER_ID: LocalDirectoryStore(tmp_path / "storage" / "other", create=True),
    }
    monkeypatch.setattr(src, "open_store", lambda source, settings: found[source.machine_id])
    return found


@pytest.fixture
def portal(monkeypatch) -> FakePortal:
    from agents.runtime.recovery import cli

    fake = FakePortal()
    monkeypatch.setattr(cli, "_portal", lambda registration, settings: fake)
    return fake


@pytest.fixture
def repo(stores) -> Repository:
    return Repository.init(stores[OWN_ID], PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


@pytest.fixture
def other_repo(stores) -> Repository:
    return Repository.init(stores[OTHER_ID], OTHER_PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


@pytest.fixture
def tree(tmp_path) -> Path:
    """/…/data: documents, a photo folder, a nested file, a symlink."""
    root = tmp_path / "data"
    write_random(root / "docs" / "report.pdf", 120_000, 1)
    (root / "docs" / "notes.txt").write_bytes(b"first version\n")
    write_random(root / "photos" / "cat.jpg", 40_000, 2)
    write_random(root / "photos" / "2024" / "dog.jpg", 30_000, 3)
    (root / "empty").mkdir()
    os.symlink("docs/notes.txt", root / "notes-link")
    return root


@pytest.fixture
def backed_up(repo, tree):
    """Two recovery points of ``tree``: notes.txt changes between them."""
    first = backup(repo, tree)
    (tree / "docs" / "notes.txt").write_bytes(b"second version, longer\n")
    second = backup(repo, tree)
    return first, second
