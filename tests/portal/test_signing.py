"""The portal's signing key is one per installation, on no portal's disk (portal.signing):
secret configuration, else a row in the database sealed with SECRET_KEY; a key file an
older portal left in its data directory is imported once."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.db import connections, transaction

from portal import signing
from portal.models import PortalKey
from tests.support.servers import REPO

OTHER_SECRET = "another-secret-key-" + "q" * 40


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@pytest.fixture(autouse=True)
def _fresh(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    settings.HAVEN_SIGNING_KEY = None
    signing.forget()
    yield
    signing.forget()


def _restart() -> str:
    """What a freshly started portal process would hold."""
    signing.forget()
    return signing.public_key_b64()


@pytest.mark.django_db
def test_the_key_is_made_once_and_kept_in_the_database_not_on_this_portals_disk(settings):
    first = signing.public_key_b64()
    assert PortalKey.objects.get(name=signing.KEY_NAME).origin == "generated"
    assert _restart() == first
    assert list(settings.DATA_DIR.iterdir()) == []


@pytest.mark.django_db
def test_the_key_at_rest_is_sealed_so_a_database_copy_alone_does_not_give_it_away(settings):
    signing.public_key_b64()
    sealed = PortalKey.objects.get().sealed
    assert "PRIVATE KEY" not in sealed
    settings.SECRET_KEY = OTHER_SECRET
    with pytest.raises(signing.SigningKeyUnusable, match="sealed with another SECRET_KEY"):
        _restart()


@pytest.mark.django_db
def test_a_secret_key_changed_with_the_old_one_in_fallbacks_keeps_the_key_and_reseals_it(
    settings,
):
    before = signing.public_key_b64()
    old_secret = settings.SECRET_KEY
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = OTHER_SECRET, [old_secret]
    assert _restart() == before
    settings.SECRET_KEY_FALLBACKS = []  # the old secret retired: the row was resealed
    assert _restart() == before


@pytest.mark.django_db
def test_a_key_file_left_in_the_data_dir_is_imported_so_agents_that_pinned_it_keep_working(
    settings,
):
    old = Ed25519PrivateKey.generate()
    (settings.DATA_DIR / signing.LEGACY_FILE).write_bytes(_pem(old))
    assert signing.public_key_b64() == _public_b64(old)
    row = PortalKey.objects.get()
    assert row.origin.startswith("imported from ") and row.origin.endswith(signing.LEGACY_FILE)
    # A second portal without the file holds the same key.
    (settings.DATA_DIR / signing.LEGACY_FILE).unlink()
    assert _restart() == _public_b64(old)


@pytest.mark.django_db
@pytest.mark.parametrize("form", ["pem", "base64"])
def test_a_key_given_as_secret_configuration_is_used_and_nothing_is_stored(settings, form):
    given = Ed25519PrivateKey.generate()
    raw = given.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    settings.HAVEN_SIGNING_KEY = (
        _pem(given).decode() if form == "pem" else base64.b64encode(raw).decode()
    )
    assert signing.public_key_b64() == _public_b64(given)
    assert not PortalKey.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_key_made_in_a_transaction_that_rolls_back_is_not_kept_by_this_portal():
    class Undo(Exception):
        pass

    with pytest.raises(Undo), transaction.atomic():
        signing.public_key_b64()
        raise Undo
    assert not PortalKey.objects.exists()
    stored = signing.public_key_b64()  # made again, now for good
    assert _public_b64(signing._stored_key()) == stored


def test_a_signing_key_that_is_not_ed25519_is_refused_with_words_to_act_on(settings):
    settings.HAVEN_SIGNING_KEY = "not a key"
    with pytest.raises(signing.SigningKeyUnusable, match="HAVEN_SIGNING_KEY is not an Ed25519"):
        signing.public_key_b64()


@pytest.mark.django_db(transaction=True)
def test_two_portals_starting_together_agree_on_one_signing_key():
    keys: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4, timeout=10)

    def portal():
        try:
            start.wait()
            keys.append(_public_b64(signing._stored_key()))
        except BaseException as exc:  # reported below, in the test thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=portal) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == [] and len(keys) == 4
    assert len(set(keys)) == 1
    assert PortalKey.objects.count() == 1


def test_the_signing_key_and_secret_key_fallbacks_are_read_from_secret_files(tmp_path):
    given = Ed25519PrivateKey.generate()
    (tmp_path / "signing.pem").write_bytes(_pem(given))
    (tmp_path / "fallbacks").write_text(f"{OTHER_SECRET},{OTHER_SECRET[::-1]}\n")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    env.update(
        HAVEN_DATA_DIR=str(tmp_path / "data"),
        HAVEN_SIGNING_KEY_FILE=str(tmp_path / "signing.pem"),
        SECRET_KEY_FALLBACKS_FILE=str(tmp_path / "fallbacks"),
    )
    shown = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c",
         "from django.conf import settings; from portal import signing; "
         "print(signing.public_key_b64()); print(len(settings.SECRET_KEY_FALLBACKS))"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [_public_b64(given), "2"]


def test_a_generated_secret_key_on_a_shared_database_is_warned_about(settings, capsys):
    settings.DATABASE_URL = "postgres://db.example.test/haven"
    settings.SECRET_KEY_GENERATED = True
    call_command("check")
    assert "haven.W013" in capsys.readouterr().err
    settings.SECRET_KEY_GENERATED = False
    call_command("check")
    assert "haven.W013" not in capsys.readouterr().err
