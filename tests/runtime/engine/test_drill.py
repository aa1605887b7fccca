"""Restore drills in the engine: the sample, the comparison of every restored byte, the
scratch folder never left (hostile manifests), and the refusal when its disk is too small."""

from __future__ import annotations

import os
import random
import shutil
from collections import namedtuple

import pytest

from agents.runtime.blobstore.base import StorageUnavailable
from agents.runtime.engine import drill
from agents.runtime.engine.drill import ScratchTooSmall, choose_sample, compare_file, run_drill
from agents.runtime.engine.file_writer import FileWriter
from agents.runtime.engine.format import DIR, FILE, SYMLINK, Entry
from agents.runtime.engine.layout import pack_blob
from agents.runtime.protocol import CONFLICT_SKIP
from tests.runtime.engine.conftest import write_random
from tests.runtime.engine.helpers import backup, craft_recovery_point, flip, pack_of_file


def files(sizes) -> list[Entry]:
    return [Entry(path=b"/f/%d" % i, kind=FILE, size=size) for i, size in enumerate(sizes)]


# -- the sample ---------------------------------------------------------------------------------
def test_a_sample_holds_the_20_largest_and_a_random_set_of_one_percent():
    sizes = list(range(1, 6_001))
    random.Random(1).shuffle(sizes)
    entries = [Entry(path=b"/d", kind=DIR), *files(sizes)]
    sample = choose_sample(entries, expected_files=6_000, rng=random.Random(2))
    chosen = [e.size for e in sample.entries]
    assert len(chosen) == 60  # 1% of 6,000
    assert chosen[:20] == list(range(6_000, 5_980, -1))  # the 20 largest, largest first
    assert len(set(chosen)) == 60 and min(chosen[20:]) < 5_000  # and 40 drawn at random
    assert (sample.point_files, sample.point_bytes) == (6_000, sum(sizes))
    again = choose_sample(files(sizes), expected_files=6_000, rng=random.Random(3))
    assert [e.size for e in again.entries][20:] != chosen[20:]  # another draw, another set


def test_a_small_point_gets_its_20_largest_and_20_random_files_and_never_a_folder():
    entries = [Entry(path=b"/l", kind=SYMLINK), *files(range(1, 101))]
    sample = choose_sample(entries, expected_files=100, rng=random.Random(0))
    assert len(sample.entries) == 40 and all(e.kind == FILE for e in sample.entries)
    assert len(choose_sample(files([5] * 7), expected_files=7).entries) == 7


def test_the_cap_keeps_the_largest_that_fit_first_and_counts_what_it_left_out():
    sample = choose_sample(files([600, 500, 400, 10, 10]), cap_bytes=1000, expected_files=5)
    assert [e.size for e in sample.entries] == [600, 400]
    assert sample.bytes == 1000 and sample.over_cap == 1 + 2  # 500 and the two small ones
    whole = choose_sample(files([600, 500, 400]), whole=True, cap_bytes=10)
    assert whole.bytes == 1500 and len(whole.entries) == 3  # the whole point has no cap


# -- a drill --------------------------------------------------------------------------------------
@pytest.fixture
def backed_up(repo, tmp_path):
    src = tmp_path / "src"
    for i in range(30):
        write_random(src / f"d{i % 3}" / f"f{i}.bin", 1000 + i * 3000, seed=i)
    (src / "empty").write_bytes(b"")
    os.chmod(src / "d1" / "f1.bin", 0o600)
    res = backup(repo, src)
    return src, res.recovery_point


def test_a_drill_restores_compares_and_deletes_its_copy(repo, backed_up, tmp_path):
    src, point = backed_up
    scratch = tmp_path / "scratch"
    report = run_drill(repo, recovery_point=point, scratch=scratch, seed=1)
    assert report.ok and report.mismatches == []
    assert report.files == 31 and report.point_files == 31  # a small point: all of it
    assert report.bytes == sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert report.restore_s > 0 and report.rate_bps > 0
    assert os.listdir(scratch) == []  # the copy is gone


def test_a_drill_names_the_file_whose_data_was_tampered_with(repo, backed_up, tmp_path):
    src, point = backed_up
    victim = src / "d2" / "f29.bin"
    (entry,) = [e for e in repo.iter_entries(repo.recovery_point(point))
                if e.path == os.fsencode(victim)]  # fmt: skip
    _, offset, _, _ = repo.index.get(entry.content[0][0])
    flip(repo.store, pack_blob(pack_of_file(repo, victim)), offset + 20)
    report = run_drill(repo, recovery_point=point, scratch=tmp_path / "scratch", seed=1)
    assert not report.ok
    assert str(victim) in [m["path"] for m in report.mismatches]
    assert os.listdir(tmp_path / "scratch") == []


def test_the_comparison_finds_a_restored_byte_that_differs(repo, backed_up, tmp_path):
    _, point = backed_up
    (entry,) = [
        e for e in repo.iter_entries(repo.recovery_point(point)) if e.path.endswith(b"f20.bin")
    ]
    writer = FileWriter(repo, tmp_path / "copy", CONFLICT_SKIP, False, lambda: False, print)
    writer.restore(entry)
    assert compare_file(repo, entry, writer) == ""
    copy = tmp_path / "copy" / os.fsdecode(entry.path).lstrip("/")
    data = bytearray(copy.read_bytes())
    data[-5] ^= 1
    stat = copy.stat()
    copy.write_bytes(data)
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "differ from the backup's hash" in compare_file(repo, entry, writer)
    copy.write_bytes(data[:-1])
    assert "bytes; the backup recorded" in compare_file(repo, entry, writer)
    writer.close()


# -- never outside the scratch folder ---------------------------------------------------------------
@pytest.fixture
def chunk(repo, tmp_path):
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "x").write_bytes(b"pwned")
    backup(repo, seed)
    (entry,) = [e for e in repo.iter_entries(repo.recovery_point("latest")) if e.kind == FILE]
    return entry.content


# (every unsafe form is tried on the restore itself: test_restore.py)
@pytest.mark.parametrize("path", [b"/a/../../escape", b"relative/escape"])
def test_a_hostile_manifest_path_is_refused_and_nothing_lands_outside(repo, chunk, tmp_path, path):
    point = craft_recovery_point(repo, [Entry(path=path, kind=FILE, mode=0o644, size=5,
                                              content=chunk)])  # fmt: skip
    scratch = tmp_path / "s" / "scratch"
    report = run_drill(repo, recovery_point=point, scratch=scratch)
    assert report.files == 0 and len(report.mismatches) == 1
    assert "refusing" in report.mismatches[0]["reason"]
    assert sorted(os.listdir(tmp_path / "s")) == ["scratch"] and os.listdir(scratch) == []
    assert not (tmp_path / "escape").exists()


def test_a_symlink_in_the_manifest_or_the_scratch_folder_is_never_followed(repo, chunk, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    point = craft_recovery_point(
        repo,
        [
            Entry(path=b"/d", kind=SYMLINK, mode=0o777, target=os.fsencode(outside)),
            Entry(path=b"/d/evil", kind=FILE, mode=0o644, size=5, content=chunk),
        ],
    )
    scratch = tmp_path / "scratch"
    report = run_drill(repo, recovery_point=point, scratch=scratch, name="job1")
    assert report.ok and report.files == 1  # restored as a real folder inside the copy
    assert os.listdir(outside) == []
    # A link planted where the drill's folder goes: the drill stops before writing.
    os.symlink(outside, scratch / "haven-drill-job2")
    with pytest.raises(FileExistsError):
        run_drill(repo, recovery_point=point, scratch=scratch, name="job2")
    assert os.listdir(outside) == []


def test_a_drill_refuses_to_start_when_the_scratch_disk_lacks_the_space(
    repo, backed_up, tmp_path, monkeypatch
):
    _, point = backed_up
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(drill.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 5 << 20))
    scratch = tmp_path / "scratch"
    with pytest.raises(ScratchTooSmall) as refused:
        run_drill(repo, recovery_point=point, scratch=scratch)
    assert "5.0 MB free" in str(refused.value) and "needs" in str(refused.value)
    assert os.listdir(scratch) == []  # nothing was restored
    monkeypatch.setattr(drill.shutil, "disk_usage", shutil.disk_usage)


def test_storage_gone_mid_drill_stops_it_instead_of_blaming_the_files(repo, backed_up, tmp_path):
    src, point = backed_up
    gone = pack_blob(pack_of_file(repo, src / "d0" / "f27.bin"))
    backend = repo.store.backend

    class Outage(type(backend)):  # the storage stops answering for the packs of that file
        def get_range(self, name, offset, length):
            if name == gone:
                raise StorageUnavailable("the storage account did not answer")
            return super().get_range(name, offset, length)

    backend.__class__ = Outage
    scratch = tmp_path / "scratch"
    with pytest.raises(StorageUnavailable):
        run_drill(repo, recovery_point=point, scratch=scratch, seed=1)
    assert os.listdir(scratch) == []
