"""``haven-agent change-passphrase`` against a live portal: a wrong current passphrase and
a wrong PIN are refused before anything is uploaded; after the change the new passphrase
backs up and restores byte for byte, the old one still opens the backups during the
vault's soft-delete period and is refused once the portal's worker removed the old key."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agents.runtime import cli
from agents.runtime import config as agent_config
from agents.runtime.blobstore import open_grant
from agents.runtime.engine import (
    Repository,
    WrongPassphrase,
    list_recovery_points,
    run_backup,
    run_restore,
)
from jobs import services
from jobs.models import PassphraseChange
from tests.agents.conftest import issue_credentials
from vaults import security_pin
from vaults.models import ActivityEntry

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.usefixtures("redis_broker"),
]
OLD = "correct horse battery staple, old"
NEW = "a new passphrase for web-01 (typed twice)"


@pytest.fixture
def registered(live_server, settings, vault, alice, tmp_path, agent_env, monkeypatch):
    # Fast key derivation for the test (the parameters are copied to every new key).
    monkeypatch.setattr(
        "agents.runtime.engine.repository.DEFAULT_KDF",
        {"name": "scrypt", "n": 2**10, "r": 8, "p": 1},
    )
    settings.HAVEN_PUBLIC_URL = live_server.url
    creds = tmp_path / "creds"
    creds.write_bytes(issue_credentials(vault, alice))
    saved = tmp_path / "passphrase"
    saved.write_text(OLD + "\n")
    saved.chmod(0o600)
    args = ["register", "--vault-credentials", str(creds), "--passphrase-file", str(saved)]
    assert cli.main([*args, "--machine-name", "web-01"]) == 0
    return agent_config.require_registration(), saved


def write(path, text):
    path.write_text(text + "\n")
    return str(path)


def key_names(store) -> list[str]:
    return sorted(b.name for b in store.list("keys/"))


def backup_and_restore(store, passphrase, source, target) -> None:
    repo = Repository.open(store, passphrase)
    run_backup(repo, sources=[str(source)], workers=1, cache_dir=target.parent / "cache")
    point = list_recovery_points(repo)[-1]
    run_restore(repo, recovery_point=point.id, target=target)
    for original in source.iterdir():
        restored = next(target.rglob(original.name))
        assert restored.read_bytes() == original.read_bytes()


def test_change_passphrase_end_to_end(registered, alice, vault, tmp_path, capsys):
    registration, saved = registered
    store = open_grant(registration.grant)
    source = tmp_path / "data"
    source.mkdir()
    (source / "ledger.bin").write_bytes(bytes(range(256)) * 300)
    backup_and_restore(store, OLD, source, tmp_path / "restore-0")
    keys_before = key_names(store)
    new_file = write(tmp_path / "new", NEW)
    pin = security_pin.generate(user=alice, vault=vault)

    def change(pin_typed, current, new=new_file):
        current_file = write(tmp_path / "current", current)
        args = ["--passphrase-file", current_file, "--new-passphrase-file", new]
        return cli.main(["change-passphrase", "--security-pin", pin_typed, *args])

    # A wrong current passphrase is refused before the portal is asked or anything uploaded.
    assert change(pin, "not the passphrase of web-01") == 1
    assert "not this machine's current passphrase" in capsys.readouterr().err
    # A wrong PIN: refused by the portal, before the upload.
    assert change("00000000", OLD) == 1
    assert "security PIN is wrong" in capsys.readouterr().err
    assert key_names(store) == keys_before and not PassphraseChange.objects.exists()

    assert change(pin, OLD) == 0
    out = capsys.readouterr().out
    assert "is changed" in out and "old passphrase still opens" in out
    assert saved.read_text().strip() == NEW and (saved.stat().st_mode & 0o077) == 0
    assert len(key_names(store)) == 2 and set(keys_before) < set(key_names(store))
    entry = ActivityEntry.objects.get(operation=ActivityEntry.Operation.PASSPHRASE_CHANGE)
    assert entry.user == alice

    # A used PIN is refused; the old passphrase is no longer the current one.
    assert change(pin, NEW, write(tmp_path / "third", "yet another passphrase here")) == 1
    assert "already used" in capsys.readouterr().err

    # The new passphrase backs up and restores; the old one still opens during the period.
    (source / "ledger.bin").write_bytes(b"changed after the passphrase change" * 1000)
    backup_and_restore(store, NEW, source, tmp_path / "restore-1")
    assert Repository.open(store, OLD).id == Repository.open(store, NEW).id

    change_row = PassphraseChange.objects.get()
    assert services.passphrase_keys_retire_due(now=change_row.retire_after) == 1
    assert key_names(store) == [f"keys/{change_row.new_key}"]
    with pytest.raises(WrongPassphrase):
        Repository.open(store, OLD)
    backup_and_restore(store, NEW, source, tmp_path / "restore-2")
    assert change_row.retire_after - change_row.completed_at == timedelta(days=14)
    store.close()
