"""What the storage, disk and clock fault tests share: a vault container on Azurite reached
through the agent's own grant path, seeded data, a small disk, and the closing verify.

The grant comes from the portal's ``AzureStorageAccount.issue_grant`` (a container SAS)
and is opened with the agent's ``storage_grant.open_store``, as a machine would; a test that
needs storage to vanish gives the account a connection string whose blob endpoint is a
``FaultProxy`` in front of Azurite, so the grant's ``container_url`` goes through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agents.runtime import engine
from agents.runtime.blobstore.base import BlobStore

FAST_KDF = {"n": 2**10, "r": 8, "p": 1}
PASSPHRASE = "correct horse battery staple 42"


def via_port(connection_string: str, port: int) -> str:
    """``connection_string`` with its blob endpoint moved to ``127.0.0.1:port``."""
    return re.sub(r"BlobEndpoint=http://127\.0\.0\.1:\d+/", f"BlobEndpoint=http://127.0.0.1:{port}/",
                  connection_string)  # fmt: skip


def azurite_port(connection_string: str) -> int:
    found = re.search(r"BlobEndpoint=http://127\.0\.0\.1:(\d+)/", connection_string)
    assert found, connection_string
    return int(found.group(1))


class Vault:
    """A container on Azurite and the machine's grant to it (issued by the portal's code)."""

    def __init__(self, connection_string: str, *, grant_connection_string: str | None = None):
        from vaults.storage.accounts import AzureStorageAccount

        self.name = f"vault-{uuid.uuid4().hex[:12]}"
        self.account = AzureStorageAccount(connection_string)
        self.account.create_container(self.name)
        granting = AzureStorageAccount(grant_connection_string or connection_string)
        self.grant = granting.issue_grant(
            self.name, expires_at=datetime.now(UTC) + timedelta(hours=1)
        )
        granting.close()

    def open(self, **kwargs) -> BlobStore:
        from agents.runtime.storage_grant import open_store

        return open_store(self.grant, **kwargs)

    def delete(self) -> None:
        self.account.delete_container(self.name)
        self.account.close()


def seed_tree(root: Path, *, files: int, size: int, seed: int = 13) -> dict[str, str]:
    """``files`` incompressible files of about ``size`` bytes; returns name -> sha256."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    digests = {}
    for i in range(files):
        data = rng.randbytes(size + rng.randint(0, size // 4))
        (root / f"f{i:03}.bin").write_bytes(data)
        digests[f"f{i:03}.bin"] = hashlib.sha256(data).hexdigest()
    return digests


def digests_of(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.iterdir())
        if p.is_file()
    }


def verify_every_point(store: BlobStore, passphrase: str = PASSPHRASE) -> list[str]:
    """``verify`` over the whole repository (every pack read back and authenticated, every
    recovery point's manifest read); returns the ids of the committed points."""
    repo = engine.Repository.open(store, passphrase)
    report = engine.run_verify(repo)
    assert report.ok, report.message
    assert not report.damaged and not report.missing and not report.unreadable_recovery_points
    points = [rp.id for rp in engine.list_recovery_points(repo)]
    assert report.recovery_points_checked == len(points)
    return points


@contextlib.contextmanager
def small_disk(where: Path, size: str):
    """A tmpfs of ``size`` (``"1m"``) mounted at ``where``: a disk that can fill up.
    ``remount(size)`` grows it, as freeing space on a real disk would."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                   check=True)  # fmt: skip
    try:
        yield lambda new: subprocess.run(
            ["mount", "-o", f"remount,size={new}", str(where)], check=True
        )
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
