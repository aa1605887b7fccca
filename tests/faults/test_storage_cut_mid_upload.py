"""Azure Storage (Azurite) goes away while a backup uploads its packs: the job fails with a
message naming the storage, no recovery point is committed half-written, the packs that
landed are accepted again byte for byte (blobs are write-once), a retry succeeds and reuses
them, and verify finds every committed point intact. A short outage is ridden out by the
retry wrapper with nothing to show for it but a slower backup."""

from __future__ import annotations

import threading
import time

import pytest

from agents.runtime import engine
from agents.runtime.blobstore.base import BlobExists
from agents.runtime.engine import layout
from agents.runtime.jobs import backup
from tests.faults._repo_support import (
    FAST_KDF,
    PASSPHRASE,
    Vault,
    azurite_port,
    seed_tree,
    verify_every_point,
    via_port,
)
from tests.runtime.jobs.conftest import FakePortal, job_payload
from tests.support.faultproxy import FaultProxy

PACK = 1 << 20


@pytest.fixture
def proxied(azurite):
    """(vault whose grant goes through the proxy, the proxy, a direct store for looking)."""
    with FaultProxy("127.0.0.1", azurite_port(azurite)) as proxy:
        vault = Vault(azurite, grant_connection_string=via_port(azurite, proxy.port))
        direct = vault.account.store(vault.name)
        engine.Repository.init(direct, PASSPHRASE, kdf=FAST_KDF)
        yield vault, proxy, direct
        vault.delete()


def packs_in(store) -> list[str]:
    return [b.name for b in store.list(layout.DATA_PREFIX)]


def points_in(store) -> list[str]:
    return [b.name for b in store.list(layout.SNAPSHOTS_PREFIX)]


def run_job(vault, data, tmp_path) -> dict:
    return backup.run_backup_job(
        "job-1",
        portal=FakePortal(job_payload([str(data)])),
        open_store=vault.open,
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "cache",
        sleep=lambda s: None,
        max_per_second=100,
        pack_size=PACK,
    )


def cut_when(direct, proxy, *, packs: int, restore_after: float | None = None) -> threading.Thread:
    """Cut the proxy once ``packs`` packs have landed (polled, bounded to 60 s)."""

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(packs_in(direct)) < packs:
            time.sleep(0.05)
        proxy.cut()
        if restore_after is not None:
            time.sleep(restore_after)
            proxy.restore()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_azure_storage_stopping_mid_upload_fails_the_backup_cleanly_and_a_retry_succeeds(
    proxied, tmp_path
):
    vault, proxy, direct = proxied
    data = tmp_path / "data"
    seed_tree(data, files=16, size=1 << 20)  # about 18 MiB: 18 packs or so
    watcher = cut_when(direct, proxy, packs=3)
    result = run_job(vault, data, tmp_path)
    watcher.join(70)
    assert result["status"] == "failed", result
    message = result["message"]
    assert message.startswith("The vault's storage could not be used: "), message
    assert f"127.0.0.1:{proxy.port}" in message, message
    assert result["recovery_point_id"] is None
    assert points_in(direct) == [], "no recovery point may be committed half-written"
    landed = packs_in(direct)
    assert landed, "the cut came mid-upload"

    proxy.restore()
    # a pack that landed is accepted again with the same bytes, refused with others
    store = vault.open()
    same = direct.get(landed[0])
    store.put(landed[0], same)
    with pytest.raises(BlobExists):
        store.put(landed[0], same[:-1] + bytes([same[-1] ^ 1]))
    assert direct.get(landed[0]) == same

    again = run_job(vault, data, tmp_path)
    assert again["status"] == "completed", again
    # the packs that landed before the cut are reused, not uploaded again
    assert set(landed) <= {layout.pack_blob(p) for p in again["pack_ids"]}
    points = verify_every_point(store)
    store.close()
    assert points == [again["recovery_point_id"]]


def test_a_short_storage_outage_mid_upload_is_ridden_out_by_the_retries(proxied, tmp_path):
    vault, proxy, direct = proxied
    data = tmp_path / "data"
    seed_tree(data, files=10, size=1 << 20)
    watcher = cut_when(direct, proxy, packs=2, restore_after=0.3)
    result = run_job(vault, data, tmp_path)
    watcher.join(70)
    assert result["status"] == "completed", result
    store = vault.open()
    assert verify_every_point(store) == [result["recovery_point_id"]]
    store.close()
