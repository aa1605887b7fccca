"""Restore: never outside the target, conflict policies, cancel, subsets."""

from __future__ import annotations

import os
import threading
import time

import pytest

from agents.runtime.engine import (
    InvalidArgument,
    ListSink,
    Repository,
    list_dir,
    run_restore,
)
from agents.runtime.engine.format import DIR, FILE, SYMLINK, Entry
from agents.runtime.engine.layout import DATA_PREFIX
from tests.runtime.engine.conftest import (
    FAST_KDF,
    PASSPHRASE,
    SMALL_CHUNKS,
    restored,
    write_random,
)
from tests.runtime.engine.helpers import backup, craft_recovery_point, restore


@pytest.fixture
def chunk(repo, tmp_path):
    """The content list of a real backed-up file ("pwned")."""
    src = tmp_path / "seed"
    src.mkdir()
    (src / "x").write_bytes(b"pwned")
    backup(repo, src)
    (entry,) = list_dir(repo, recovery_point="latest", path=str(src))
    return entry.content


@pytest.mark.parametrize(
    "path",
    [b"/../escape", b"/a/../../escape", b"relative/escape", b"//escape", b"/a/./b", b"/nul\0x"],
)
def test_it_refuses_manifest_paths_that_could_escape_the_target(repo, chunk, tmp_path, path):
    rp = craft_recovery_point(
        repo, [Entry(path=path, kind=FILE, mode=0o644, size=5, content=chunk)]
    )
    target = tmp_path / "t" / "target"
    res = run_restore(repo, recovery_point=rp, target=target)
    assert res.files == 0
    assert len(res.failed) == 1 and "refusing" in res.failed[0]["reason"]
    assert not (tmp_path / "t" / "escape").exists() and not (tmp_path / "escape").exists()


def test_a_hostile_name_is_refused_after_a_safe_file_of_the_same_folder(repo, chunk, tmp_path):
    """Files of one folder come one after another and only the first has its whole path
    checked; every later name is still checked, in the calling process and the writers."""
    hostile = [b"/a/..", b"/a/", b"/a/.", b"/a/nul\0x"]
    rp = craft_recovery_point(
        repo,
        [
            Entry(path=b"/a", kind=DIR, mode=0o755),
            Entry(path=b"/a/ok", kind=FILE, mode=0o644, size=5, content=chunk),
            *[Entry(path=p, kind=FILE, mode=0o644, size=5, content=chunk) for p in hostile],
            Entry(path=b"/top", kind=FILE, mode=0o644, size=5, content=chunk),
            Entry(path=b"escape", kind=FILE, mode=0o644, size=5, content=chunk),  # relative
        ],
    )
    target = tmp_path / "t" / "target"
    res = run_restore(repo, recovery_point=rp, target=target)
    assert res.files == 2
    assert (target / "a" / "ok").read_bytes() == b"pwned"
    assert (target / "top").read_bytes() == b"pwned"
    refused = sorted(f["path"] for f in res.failed if "refusing" in f["reason"])
    assert len(refused) == len(hostile) + 1, res.failed
    assert sorted(os.listdir(target)) == ["a", "top"]
    assert os.listdir(target / "a") == ["ok"]
    assert sorted(os.listdir(tmp_path / "t")) == ["target"]


def test_it_never_follows_a_symlinked_parent_inside_the_target(repo, chunk, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    rp = craft_recovery_point(
        repo,
        [
            Entry(path=b"/d", kind=SYMLINK, mode=0o777, target=os.fsencode(outside)),
            Entry(path=b"/d/evil", kind=FILE, mode=0o644, size=5, content=chunk),
        ],
    )
    res = run_restore(repo, recovery_point=rp, target=tmp_path / "target")
    assert os.listdir(outside) == []
    assert len(res.failed) == 1 and "symbolic link" in res.failed[0]["reason"]


def test_it_never_follows_a_symlink_planted_in_the_target(repo, chunk, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "d")
    rp = craft_recovery_point(
        repo,
        [
            Entry(path=b"/d", kind=DIR, mode=0o755),
            Entry(path=b"/d/evil", kind=FILE, mode=0o644, size=5, content=chunk),
        ],
    )
    for policy in ("overwrite", "skip", "copy"):
        run_restore(repo, recovery_point=rp, target=target, on_conflict=policy)
        assert os.listdir(outside) == []


def test_overwrite_replaces_an_existing_symlink_instead_of_writing_through_it(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("new")
    backup(repo, src)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    dest = restored(tmp_path / "out", src)
    dest.mkdir(parents=True)
    os.symlink(victim, dest / "f")
    restore(repo, tmp_path / "out", on_conflict="overwrite")
    assert victim.read_text() == "keep me"
    assert not (dest / "f").is_symlink() and (dest / "f").read_text() == "new"


@pytest.fixture
def conflict(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "report.txt").write_text("from backup")
    (src / ".bashrc").write_text("rc from backup")
    backup(repo, src)
    dest = restored(tmp_path / "out", src)
    dest.mkdir(parents=True)
    (dest / "report.txt").write_text("local edit")
    (dest / ".bashrc").write_text("local rc")
    return dest


def test_conflict_overwrite_replaces_existing_files(repo, tmp_path, conflict):
    res = restore(repo, tmp_path / "out", on_conflict="overwrite")
    assert (conflict / "report.txt").read_text() == "from backup"
    assert res.files == 2


def test_conflict_skip_keeps_existing_files(repo, tmp_path, conflict):
    res = restore(repo, tmp_path / "out", on_conflict="skip")
    assert (conflict / "report.txt").read_text() == "local edit"
    assert res.skipped == 2 and res.files == 0


def test_conflict_copy_restores_beside_with_a_numbered_name(repo, tmp_path, conflict):
    restore(repo, tmp_path / "out", on_conflict="copy")
    restore(repo, tmp_path / "out", on_conflict="copy")
    assert (conflict / "report.txt").read_text() == "local edit"
    assert (conflict / "report (1).txt").read_text() == "from backup"
    assert (conflict / "report (2).txt").read_text() == "from backup"
    assert (conflict / ".bashrc (1)").read_text() == "rc from backup"


def test_an_unknown_conflict_policy_is_refused(repo, tmp_path):
    with pytest.raises(InvalidArgument, match="overwrite, skip, copy"):
        restore(repo, tmp_path / "out", on_conflict="merge")


def test_cancel_keeps_finished_files_complete_and_says_so(memory_store, tmp_path, monkeypatch):
    repo = Repository.init(memory_store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    for i in range(20):
        write_random(src / f"f{i:02}", 100_000, i)
    backup(repo, src, pack_size=64 * 1024)
    original = type(memory_store).get_range

    def slow_get_range(self, name, offset, length):  # a slow link: ~50 ms per pack read
        if name.startswith(DATA_PREFIX):
            time.sleep(0.05)
        return original(self, name, offset, length)

    monkeypatch.setattr(type(memory_store), "get_range", slow_get_range)
    cancel = threading.Event()

    class CancelSoon(ListSink):
        def emit(self, event):
            super().emit(event)
            if event["type"] == "progress" and event["files_done"] >= 2:
                cancel.set()  # a few files in: the user presses Cancel

    sink = CancelSoon()
    res = restore(repo, tmp_path / "out", cancel=cancel, sink=sink)
    assert sink.events[-1]["status"] == "cancelled"
    assert res.status == "cancelled"
    assert "cancelled after" in res.message
    out = restored(tmp_path / "out", src)
    names = sorted(os.listdir(out))
    assert 2 <= len(names) < 20
    for name in names:  # whatever is there is whole
        assert (out / name).read_bytes() == (src / name).read_bytes()


def test_it_restores_a_single_file(repo, source, tmp_path):
    backup(repo, source)
    res = restore(repo, tmp_path / "out", paths=[str(source / "sub" / "a.dat")])
    assert res.files == 1
    out = restored(tmp_path / "out", source)
    assert (out / "sub" / "a.dat").read_bytes() == (source / "sub" / "a.dat").read_bytes()
    assert not (out / "random.bin").exists()


def test_a_target_that_is_itself_a_symlink_is_used(repo, source, tmp_path):
    backup(repo, source)
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "via-link")
    res = restore(repo, tmp_path / "via-link")
    assert res.status == "completed"
    assert restored(tmp_path / "real", source).joinpath("text.txt").exists()


def test_a_selection_restores_exactly_what_is_under_it(repo, tmp_path):
    """Reading stops past the last selection; names that only share a prefix are not taken."""
    src = tmp_path / "src"
    for rel in ("a/b/x", "a/b/y/deep", "a/b.txt", "a/bb/x", "a/c/y", "z", "zz/w"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode())
    backup(repo, src)
    res = restore(repo, tmp_path / "out", paths=[str(src / "z"), str(src / "a" / "b")])
    assert res.status == "completed" and res.files == 3
    out = restored(tmp_path / "out", src)
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == ["a/b/x", "a/b/y/deep", "z"]
