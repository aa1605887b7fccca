"""run_verify_job with the real engine on a local-directory store and a fake portal: a clean
repository verifies, a flipped byte in a pack fails the job naming the pack, the files and
the recovery point, and the weekly slices together read every pack once."""

from __future__ import annotations

from agents.runtime import protocol
from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.engine import Repository
from agents.runtime.engine.layout import pack_blob
from agents.runtime.engine.verify import in_slice, run_verify
from agents.runtime.jobs import backup, verify
from tests.runtime.jobs.conftest import FAST_KDF, PASSPHRASE, FakePortal, job_payload


def _backed_up(data, tmp_path):
    store = LocalDirectoryStore(tmp_path / "store", create=True)
    Repository.init(store, PASSPHRASE, kdf=FAST_KDF)
    made = backup.run_backup_job(
        "job-1",
        portal=FakePortal(job_payload([str(data)])),
        open_store=lambda: store,
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "cache",
        sleep=lambda s: None,
        pack_size=64 * 1024,  # several packs from the small tree
    )
    assert made["status"] == "completed", made
    return store, made


def _verify(store, tmp_path, **details):
    portal = FakePortal({**job_payload([]), "operation": "verify", "details": details})
    result = verify.run_verify_job(
        "job-1",
        portal=portal,
        open_store=lambda: store,
        passphrase=PASSPHRASE,
        cache_dir=tmp_path / "cache",
        sleep=lambda s: None,
    )
    return portal, result


def _flip_on_disk(tmp_path, pack_id: str, offset: int) -> None:
    path = tmp_path / "store" / pack_blob(pack_id)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_clean_repository_verifies_with_progress(data, tmp_path):
    store, made = _backed_up(data, tmp_path)
    portal, result = _verify(store, tmp_path)
    assert result["status"] == "completed", result
    assert result["damage"] == []
    stats = result["stats"]
    assert stats["packs_checked"] == stats["packs_total"] == len(made["pack_ids"])
    assert stats["recovery_points_checked"] == 1
    assert portal.progress and portal.progress[-1]["phase"] == "verifying"
    assert protocol.JobResult.from_wire(result).status == "completed"


def test_a_flipped_byte_fails_the_job_naming_pack_files_and_point(data, tmp_path):
    store, made = _backed_up(data, tmp_path)
    repo = Repository.open(store, PASSPHRASE)
    index = repo.load_index()
    by_pack = index.chunks_of_pack()
    # the pack holding the most chunks: file data, not only metadata
    no = max(by_pack, key=lambda n: len(by_pack[n]))
    pack = index.pack_ids[no].hex()
    _cid, offset, _length, _raw = by_pack[no][0]
    _flip_on_disk(tmp_path, pack, offset + 20)
    _portal, result = _verify(store, tmp_path)
    assert result["status"] == "failed"
    (entry,) = result["damage"]
    assert entry["pack"] == pack
    assert entry["recovery_points"] == [made["recovery_point_id"]]
    assert entry["files"] and all(f["path"].startswith(str(data)) for f in entry["files"])
    assert pack in result["message"]
    assert entry["files"][0]["path"] in result["message"]
    assert made["recovery_point_id"][:8] in result["message"]
    # what the portal reads back is the same report
    assert protocol.JobResult.from_wire(result).damage == result["damage"]


def test_the_slices_read_every_pack_once(data, tmp_path):
    store, made = _backed_up(data, tmp_path)
    repo = Repository.open(store, PASSPHRASE)
    weeks = 3
    counts = [run_verify(repo, slices=weeks, slice_no=k).packs_checked for k in range(weeks)]
    assert sum(counts) == len(made["pack_ids"])
    ids = [bytes.fromhex(p) for p in made["pack_ids"]]
    assert all(sum(in_slice(p, weeks, k) for k in range(weeks)) == 1 for p in ids)


def test_a_slice_the_portal_cannot_mean_fails_the_job_in_words(data, tmp_path):
    store, _made = _backed_up(data, tmp_path)
    _portal, result = _verify(store, tmp_path, slices=2, slice=5)
    assert result["status"] == "failed"
    assert "slice 5 of 2" in result["message"]
