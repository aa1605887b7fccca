"""A first backup's walk does not lstat regular files: the workers take each file's metadata
from the fstat of the file they open, hand hard-linked ones back to the main process, and
skip with a warning a file that is no longer a regular file when they open it."""

from __future__ import annotations

import os
import stat
import threading

from agents.runtime.engine import WalkAhead, chunkers, list_dir, run_backup
from agents.runtime.engine.format import FILE, HARDLINK
from agents.runtime.engine.scan import LARGE_FILE, Excluder, count_tree, walk
from tests.runtime.engine.conftest import restored, tree_snapshot, write_random
from tests.runtime.engine.helpers import backup, restore


def _unstated_backup(repo, src, **kw):
    return backup(repo, src, walk=WalkAhead([src], lstat_files=False), **kw)


def test_the_walk_told_to_skip_lstat_lists_regular_files_without_it(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_random(src / "a", 100, 1)
    write_random(src / "sub" / "b", 100, 2)
    os.symlink("a", src / "link")
    lstated: list[bytes] = []
    original = os.lstat

    def counting_lstat(path, *args, **kw):
        lstated.append(os.fsencode(path))
        return original(path, *args, **kw)

    monkeypatch.setattr(os, "lstat", counting_lstat)
    skip = threading.Event()
    skip.set()
    items = dict(walk([os.fsencode(src)], Excluder(()), lambda p, r: None, skip))
    root = os.fsencode(src)
    assert items[root + b"/a"] is None and items[root + b"/sub/b"] is None
    assert stat.S_ISLNK(items[root + b"/link"].st_mode)
    assert stat.S_ISDIR(items[root + b"/sub"].st_mode)
    assert root + b"/a" not in lstated and root + b"/sub/b" not in lstated


def test_the_walk_in_runs_gives_a_folder_s_files_in_one_step_and_keeps_tree_order(tmp_path):
    src = tmp_path / "src"
    for name in ("a", "b", "c.tmp", "e", "g", "d/x", "d/y"):
        write_random(src / name, 10, 1)
    os.symlink("a", src / "f")
    skip = threading.Event()
    skip.set()
    root = os.fsencode(src)
    items = list(walk([root], Excluder(["*.tmp"]), lambda p, r: None, skip, runs=True))
    shape = [
        [p[len(root) :] for p in path] if type(path) is list else path[len(root) :]
        for path, _st in items
        if type(path) is list or path.startswith(root)
    ]
    assert shape == [b"", [b"/a", b"/b"], b"/d", [b"/d/x", b"/d/y"], [b"/e"], b"/f", [b"/g"]]
    singly = [p for p, _ in walk([root], Excluder(["*.tmp"]), lambda p, r: None, skip)]
    assert [q for p, _ in items for q in (p if type(p) is list else [p])] == singly


def test_a_first_backup_without_lstat_restores_files_links_and_metadata_exactly(repo, tmp_path):
    src = tmp_path / "src"
    write_random(src / "big.bin", 300_000, 1)
    (src / "empty").write_bytes(b"")
    write_random(src / "sub" / "deeper" / "x.dat", 5_000, 2)
    os.chmod(src / "sub" / "deeper" / "x.dat", 0o640)
    os.utime(src / "empty", ns=(1_000_000_000, 1_234_567_890_123))
    os.symlink("big.bin", src / "link")
    os.setxattr(src / "big.bin", "user.origin", b"scanner 7")
    shared = write_random(src / "h1", 70_000, 3)
    os.link(src / "h1", src / "sub" / "h2")
    os.link(src / "h1", src / "z-h3")
    result = _unstated_backup(repo, src)
    assert result.status == "completed", result.warnings
    # the set of three paths is one file: stored once, counted once
    assert result.files == 4
    assert result.logical_bytes == 300_000 + 5_000 + 70_000
    restore(repo, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert tree_snapshot(out) == tree_snapshot(src)
    assert os.getxattr(out / "big.bin", "user.origin") == b"scanner 7"
    inodes = {os.stat(out / p).st_ino for p in ("h1", "sub/h2", "z-h3")}
    assert len(inodes) == 1 and (out / "z-h3").read_bytes() == shared


def test_a_file_replaced_after_the_listing_is_skipped_with_a_warning_naming_it(
    repo, tmp_path, monkeypatch
):
    src = tmp_path / "src"
    for name in ("now-a-link", "now-a-folder", "stays"):
        write_random(src / name, 1_000, len(name))
    original = chunkers.FileProcessor._open

    def _open(self, path):  # another program replaces the file just before it is opened
        name = os.path.basename(path)
        if name in (b"now-a-link", b"now-a-folder"):
            os.unlink(path)
            if name == b"now-a-link":
                os.symlink("stays", path)
            else:
                os.mkdir(path)
        return original(self, path)

    monkeypatch.setattr(chunkers.FileProcessor, "_open", _open)
    result = _unstated_backup(repo, src)
    assert result.status == "completed_with_warnings"
    reasons = {w["path"].rsplit("/", 1)[-1]: w["reason"] for w in result.warnings}
    assert reasons == {
        "now-a-link": "was replaced by something that is not a regular file",
        "now-a-folder": "was replaced by something that is not a regular file",
    }
    assert result.files == 1


def test_an_incremental_backup_given_a_walk_without_lstat_still_sees_every_change(repo, tmp_path):
    src = tmp_path / "src"
    write_random(src / "same", 20_000, 1)
    write_random(src / "edited", 20_000, 2)
    backup(repo, src)
    edited = write_random(src / "edited", 20_000, 3)  # same size, new content
    write_random(src / "new", 1_000, 4)
    second = _unstated_backup(repo, src)
    assert second.status == "completed"
    assert second.files == 3 and second.files_unchanged == 1 and second.files_read == 2
    restore(repo, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert (out / "edited").read_bytes() == edited
    assert tree_snapshot(out) == tree_snapshot(src)


def test_the_count_totals_regular_files_and_notes_the_large_ones(tmp_path):
    src = tmp_path / "src"
    write_random(src / "a", 1_000, 1)
    write_random(src / "sub" / "b.tmp", 2_000, 2)  # excluded
    write_random(src / "sub" / "large", LARGE_FILE, 3)
    os.symlink("a", src / "link")
    large: dict[bytes, int] = {}
    totals = list(count_tree([os.fsencode(src)], Excluder(["*.tmp"]), lambda: False, large))
    assert totals[-1] == (2, 1_000 + LARGE_FILE)
    assert large == {os.fsencode(src / "sub" / "large"): LARGE_FILE}


def test_a_set_member_lstat_ed_after_the_walk_stopped_lstat_ing_still_links_to_its_set(
    repo, tmp_path
):
    # A staged (mapped) folder is walked with lstat, after the sources walked without: its
    # path of a hard-link set is met in the walk while the set's source path comes back from
    # a worker. Whichever the main process sees first is the set's file, the other a link.
    src, staging = tmp_path / "src", tmp_path / "cache" / "staging"
    data = write_random(src / "h", 30_000, 5)
    staging.mkdir(parents=True)
    os.link(src / "h", staging / "h")
    walk = WalkAhead([src], lstat_files=False, mapped={"system-state": staging})
    result = run_backup(repo, walk=walk, pack_size=256 * 1024, hostname="test-host")
    assert result.status == "completed", result.warnings
    assert result.files == 1 and result.logical_bytes == 30_000
    entries = [
        *list_dir(repo, recovery_point="latest", path=str(src)),
        *list_dir(repo, recovery_point="latest", path="system-state"),
    ]
    by_kind = {e.kind: e for e in entries}
    assert sorted(by_kind) == [FILE, HARDLINK]
    assert by_kind[HARDLINK].target == by_kind[FILE].path
    assert by_kind[FILE].size == by_kind[HARDLINK].size == len(data)
