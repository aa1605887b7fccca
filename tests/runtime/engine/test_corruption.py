"""A flipped byte is found by verify (pack and files named) and fails only the files needing it."""

from __future__ import annotations

import os

from agents.runtime.engine import list_dir, run_verify
from agents.runtime.engine.layout import pack_blob
from tests.runtime.engine.conftest import restored, write_random
from tests.runtime.engine.helpers import backup, flip, remove, restore


def _files_covering(repo, src, pack_hex: str, offset: int) -> list[str]:
    """Which files have a chunk stored over ``offset`` of the pack (the expected victims)."""
    out = []
    for e in list_dir(repo, recovery_point="latest", path=str(src)):
        for cid, _ in e.content:
            pno, off, length, _raw = repo.index.get(cid)
            if repo.index.pack_ids[pno].hex() == pack_hex and off <= offset < off + length:
                out.append(os.fsdecode(e.path))
    return out


def _data_pack(repo, src) -> str:
    """A pack holding file data (not the metadata pack): the one with f0's first chunk."""
    (f0,) = [e for e in list_dir(repo, recovery_point="latest", path=str(src)) if e.name == b"f0"]
    return repo.index.pack_ids[repo.index.get(f0.content[0][0])[0]].hex()


def _tree(tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        write_random(src / f"f{i}", 300_000, i)  # ~1.1 packs each with 256 KiB packs
    return src


def test_verify_names_the_damaged_pack_and_the_files_it_affects(repo, memory_store, tmp_path):
    src = _tree(tmp_path)
    result = backup(repo, src)
    assert run_verify(repo).ok
    victim_pack = bytes.fromhex(_data_pack(repo, src))
    victims = _files_covering(repo, src, victim_pack.hex(), 100)
    assert len(victims) == 1
    flip(memory_store, pack_blob(victim_pack), 100)
    report = run_verify(repo)
    assert not report.ok
    assert [d.pack_id for d in report.damaged] == [victim_pack.hex()]
    damaged = report.damaged[0]
    assert damaged.bad_chunks == 1
    assert [f["path"] for f in damaged.files] == victims
    assert damaged.files[0]["recovery_point"] == result.recovery_point
    assert "damage found" in report.message


def test_restore_fails_only_the_files_in_the_damaged_pack(repo, memory_store, tmp_path):
    src = _tree(tmp_path)
    backup(repo, src)
    pack = _data_pack(repo, src)
    victims = _files_covering(repo, src, pack, 100)
    flip(memory_store, pack_blob(pack), 100)
    res = restore(repo, tmp_path / "out")
    assert res.status == "completed_with_warnings"
    assert [f["path"] for f in res.failed] == victims
    assert "pack" in res.failed[0]["reason"] and pack in res.failed[0]["reason"]
    out = restored(tmp_path / "out", src)
    victim = os.path.basename(victims[0])
    assert not (out / victim).exists()  # never a silently wrong file
    for i in range(6):
        if f"f{i}" != victim:
            assert (out / f"f{i}").read_bytes() == (src / f"f{i}").read_bytes()


def test_verify_of_a_fraction_checks_only_some_packs(repo, tmp_path):
    backup(repo, _tree(tmp_path))
    report = run_verify(repo, fraction=0.25, seed=1)
    assert report.ok
    assert 0 < report.packs_checked < report.packs_total


def test_verify_reports_a_missing_pack(repo, memory_store, tmp_path):
    src = _tree(tmp_path)
    backup(repo, src)
    (entry,) = [
        e for e in list_dir(repo, recovery_point="latest", path=str(src)) if e.name == b"f3"
    ]
    pack_no = repo.index.get(entry.content[0][0])[0]
    remove(memory_store, pack_blob(repo.index.pack_ids[pack_no]))
    report = run_verify(repo)
    assert not report.ok
    assert "missing" in report.damaged[0].reason
    assert str(src / "f3") in [f["path"] for f in report.damaged[0].files]
