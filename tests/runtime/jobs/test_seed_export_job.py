"""run_seed_export_job (the portal's offline backup to disk) with the real engine, an
in-memory container and a fake portal: the seed lands in the staging folder, nothing is
uploaded, and a folder the agent cannot use fails with words that name it."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import namedtuple

from agents.runtime import seed
from agents.runtime.blobstore.memory import MemoryStore
from agents.runtime.engine import Repository
from agents.runtime.engine.counting import CountProcess
from agents.runtime.jobs import seed_export
from tests.runtime.jobs.conftest import FAST_KDF, PASSPHRASE, FakePortal, job_payload

IDENTITY = {
    "vault_id": "v-1",
    "vault_name": "vault-one",
    "machine_id": "m-1",
    "machine_name": "web-01",
}


def run(store, folder, data, tmp_path):
    portal = FakePortal(
        job_payload([str(data)], operation="seed_export", details={"folder": str(folder)})
    )
    result = seed_export.run_seed_export_job(
        "job-1",
        portal=portal,
        open_store=lambda: store,
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "cache",
        identity=IDENTITY,
        sleep=lambda s: None,
    )
    assert portal.result == result
    return portal, result


def test_the_job_writes_the_seed_to_the_folder_and_uploads_nothing(data, repo_store, tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    before = {b.name for b in repo_store.list("")}
    portal, result = run(repo_store, folder, data, tmp_path)
    assert result["status"] == "completed", result
    header = json.loads((folder / seed.SEED_HEADER).read_text())
    assert result["recovery_point_id"] == header["recovery_point_id"]
    assert header["machine"] == {"id": "m-1", "name": "web-01"}
    assert result["stats"]["files"] == 40 and result["stats"]["blobs"] == len(header["blobs"])
    assert result["stats"]["stored_bytes"] == sum(b["size"] for b in header["blobs"])
    assert (folder / header["manifest_blob"]).is_file()
    # The container holds what it held: config and keys, no pack, index or manifest.
    assert {b.name for b in repo_store.list("")} == before
    assert all(n == "config" or n.startswith("keys/") for n in before)
    assert portal.progress and portal.progress[-1]["files_done"] == 40

    # Again before the import: a newer point in the same folder, the packs reused.
    packs = {b["name"] for b in header["blobs"] if b["name"].startswith("data/")}
    (data / "docs" / "new.bin").write_bytes(os.urandom(5000))
    _, again = run(repo_store, folder, data, tmp_path)
    header2 = json.loads((folder / seed.SEED_HEADER).read_text())
    assert (
        again["status"] == "completed" and again["recovery_point_id"] != header["recovery_point_id"]
    )
    assert packs < {b["name"] for b in header2["blobs"] if b["name"].startswith("data/")}


def test_a_missing_staging_folder_fails_naming_it_and_is_not_created(data, repo_store, tmp_path):
    folder = tmp_path / "not-mounted"
    _, result = run(repo_store, folder, data, tmp_path)
    assert result["status"] == "failed"
    assert f"The seed staging folder {folder} does not exist" in result["message"]
    assert "mount the seed disk" in result["message"]
    assert not folder.exists()


def test_a_folder_with_other_files_or_another_repositorys_seed_is_refused(
    data, repo_store, tmp_path
):
    folder = tmp_path / "disk"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"photo")
    _, result = run(repo_store, folder, data, tmp_path)
    assert result["status"] == "failed"
    assert f"{folder} holds 'holiday.jpg'" in result["message"]
    assert "choose an empty folder" in result["message"]

    other = MemoryStore()
    Repository.init(other, PASSPHRASE, kdf=FAST_KDF)
    (folder / "holiday.jpg").unlink()
    assert run(other, folder, data, tmp_path)[1]["status"] == "completed"
    _, result = run(repo_store, folder, data, tmp_path)
    assert result["status"] == "failed"
    assert (
        f"The seed staging folder {folder} holds the seed of another repository"
        in (result["message"])
    )


def test_a_read_only_folder_fails_saying_so(data, repo_store, tmp_path, monkeypatch):
    folder = tmp_path / "disk"
    folder.mkdir(mode=0o555)
    if os.access(folder, os.W_OK):  # root: the mode is not enforced, so the check is told
        real = os.access
        monkeypatch.setattr(
            seed.os, "access", lambda p, mode: False if p == folder else real(p, mode)
        )
    _, result = run(repo_store, folder, data, tmp_path)
    assert result["status"] == "failed"
    assert f"{folder} is not writable by the Haven agent's user" in result["message"]
    assert not (folder / "config").exists()


def test_too_little_space_fails_naming_the_folder_and_the_space_needed(
    data, repo_store, tmp_path, monkeypatch
):
    folder = tmp_path / "disk"
    folder.mkdir()
    # However late the count's total comes (here long after the 40 files could be backed
    # up), the first file is read only once it has been checked.
    counted = CountProcess.totals

    def late(self, stop):
        time.sleep(0.5)
        yield from counted(self, stop)

    monkeypatch.setattr(CountProcess, "totals", late)
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")

    def small_disk(path):
        if os.fspath(path) == os.fspath(folder):
            return usage(100_000, 90_000, 10_000)
        return real(path)

    monkeypatch.setattr(seed.shutil, "disk_usage", small_disk)
    _, result = run(repo_store, folder, data, tmp_path)
    assert result["status"] == "failed", result
    message = result["message"]
    assert f"The seed staging folder {folder} has 9.8 KB free" in message
    assert "it needs about" in message and f"Mount a larger disk at {folder}" in message
    assert result["recovery_point_id"] is None
    assert not (folder / "data").exists()  # refused before a pack was written
