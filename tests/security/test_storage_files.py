"""Another account on the portal's host must not read the local storage directory: every
blob is 0600 and every folder 0700, whatever the umask of the process that wrote it."""

from __future__ import annotations

import os
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from agents.runtime.blobstore.local import LocalDirectoryStore
from vaults.storage import primary_account


@pytest.fixture
def open_umask():
    """The loosest umask a service could run with."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def loose_entries(root: Path) -> list[str]:
    """Entries under ``root`` (itself included) that group or others may read or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            found.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return found


def test_another_user_cannot_read_blobs_a_machine_uploaded(
    settings, tmp_path, live_server, open_umask
):
    settings.AZURE_STORAGE_CONNECTION_STRING = None
    settings.SECONDARY_STORAGE_CONNECTION_STRING = None
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.HAVEN_PUBLIC_URL = live_server.url
    container = f"machine-{uuid.uuid4().hex}"
    account = primary_account()
    account.create_container(container)
    grant = account.issue_grant(container, expires_at=datetime.now(UTC) + timedelta(hours=1))
    uploaded = requests.put(
        grant["base_url"] + "data/ab/" + "ab" * 16,
        data=b"a sealed pack",
        headers={"Authorization": f"HavenGrant {grant['token']}"},
        timeout=10,
    )
    assert uploaded.status_code == 201
    assert loose_entries(tmp_path / "storage") == []


def test_a_local_store_keeps_its_files_private_under_any_umask(tmp_path, open_umask):
    store = LocalDirectoryStore(tmp_path / "container", create=True)
    store.put("snapshots/" + "cd" * 16, b"manifest")
    store.put_stream("data/cd/" + "cd" * 16, [b"pack ", b"bytes"], length=10)
    assert loose_entries(tmp_path / "container") == []
