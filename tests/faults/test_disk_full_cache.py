"""The cache location's disk is too small or fills up: the backup job says which disk, how
much is free and how much it needs; no recovery point is lost or left half-made; after space
is freed the next backup completes, and verify finds every committed point intact."""

from __future__ import annotations

import errno
import os
import re

import pytest

from agents.runtime import engine
from agents.runtime.jobs import backup
from tests.faults._repo_support import (
    FAST_KDF,
    PASSPHRASE,
    Vault,
    seed_tree,
    small_disk,
    verify_every_point,
)
from tests.runtime.jobs.conftest import FakePortal, job_payload


@pytest.fixture
def vault(azurite):
    made = Vault(azurite)
    store = made.open()
    engine.Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
    store.close()
    yield made
    made.delete()


def back_up(vault, data, cache, *, minimum=0, portal=None) -> tuple[dict, FakePortal]:
    portal = portal or FakePortal(job_payload([str(data)], min_cache_free_bytes=minimum))
    result = backup.run_backup_job(
        "job-1",
        portal=portal,
        open_store=vault.open,
        passphrase=PASSPHRASE,
        cache_dir=cache,
        sleep=lambda s: None,
        max_per_second=100,
    )
    return result, portal


def test_a_cache_disk_too_small_for_the_data_fails_the_backup_up_front(vault, tmp_path):
    data = tmp_path / "data"
    seed_tree(data / "docs", files=24, size=1 << 20)  # about 27 MiB: the cache needs 5%
    first, _ = back_up(vault, data, tmp_path / "roomy-cache")
    assert first["status"] == "completed", first
    cache = tmp_path / "cache"
    with small_disk(cache, "1m") as grow:
        store = vault.open()
        before = set(b.name for b in store.list(""))
        result, portal = back_up(vault, data, cache)
        assert result["status"] == "failed"
        message = result["message"]
        assert f"The cache location {cache} has" in message
        # the 1 MiB disk, less what the job's own journal took of it
        assert re.search(r"has 10[0-2][0-9]\.\d KB free|has 1\.0 MB free", message), message
        assert "backing up 26.9 MB needs at least 1.3 MB (5% of the data)" in message, message
        assert "haven-agent configure --cache-dir" in message
        assert result["recovery_point_id"] is None
        # nothing was read or uploaded: the storage holds what it held
        assert set(b.name for b in store.list("")) == before
        assert not portal.progress or portal.progress[-1].get("files_done", 0) == 0

        grow("4m")  # space freed
        again, _ = back_up(vault, data, cache)
        assert again["status"] == "completed", again
        points = verify_every_point(store)
        assert {first["recovery_point_id"], again["recovery_point_id"]} == set(points)
        store.close()


def test_a_cache_disk_that_fills_during_a_backup_keeps_the_recovery_point(vault, tmp_path):
    data = tmp_path / "data"
    seed_tree(data / "docs", files=20, size=64 << 10)
    cache = tmp_path / "cache"
    filler = cache / "filler"

    def fill_the_disk() -> None:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    class FillsTheDiskAtTheEnd(FakePortal):
        """Something else fills the disk while the backup finishes (after the walk, and so
        after the cache check against the data it counted): the index cache, written after
        the point is committed, cannot be saved."""

        def post(self, path: str, payload: dict | None = None) -> dict:
            finishing = (payload or {}).get("phase") == "finalizing"
            if path.endswith("/progress/") and finishing and not filler.exists():
                fill_the_disk()
            return super().post(path, payload)

    with small_disk(cache, "256k") as grow:
        portal = FillsTheDiskAtTheEnd(job_payload([str(data)], min_cache_free_bytes=0))
        result, _ = back_up(vault, data, cache, portal=portal)
        assert filler.exists(), "the backup reported its last phase"
        assert result["status"] == "warning", result
        assert result["recovery_point_id"], result
        # the disk could not keep the result, but the portal has it (from memory), and no
        # "started" journal is left to be reported abandoned after a restart
        assert portal.result is not None and portal.result["status"] == "warning"
        reasons = [w["reason"] for w in result["warnings"]]
        assert any(
            f"the index cache could not be saved in the cache location {cache}" in r
            and "No space left on device" in r
            for r in reasons
        ), reasons
        # no half-written cache file is left for the next backup to trust
        leftovers = [p.name for p in cache.rglob("*") if p.is_file() and p != filler]
        assert leftovers == [], leftovers

        filler.unlink()  # space freed
        grow("8m")
        again, _ = back_up(vault, data, cache)
        assert again["status"] == "completed", again
        assert any(p.name == "index.bin" for p in cache.rglob("*")), "the cache was rebuilt"
        store = vault.open()
        points = verify_every_point(store)
        store.close()
        assert {result["recovery_point_id"], again["recovery_point_id"]} == set(points)
