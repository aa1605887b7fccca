"""The walk: kernel and virtual file systems are not entered."""

from __future__ import annotations

import os

import pytest

from agents.runtime.engine import WalkAhead, run_backup
from agents.runtime.engine.scan import Excluder, WalkStat, pseudo_devices, walk
from tests.runtime.engine.conftest import restored, tree_snapshot, write_random
from tests.runtime.engine.helpers import restore

MOUNTINFO = b"""22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334432k,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683656k
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
42 27 0:40 / /mnt/my\\040disk rw,relatime - xfs /dev/sdb1 rw
"""


def test_kernel_file_systems_are_recognised_from_mountinfo():
    devs = pseudo_devices(MOUNTINFO)
    assert devs == {os.makedev(0, n) for n in (21, 22, 6, 24, 38)}  # not tmpfs, ext4, xfs


def test_proc_is_kept_as_a_folder_but_never_entered(repo, tmp_path):
    src = tmp_path / "src"
    write_random(src / "a", 1000, 1)
    paths = [p for p, _ in walk([b"/proc", os.fsencode(src)], Excluder([]), lambda p, r: None)]
    assert b"/proc" in paths
    assert not [p for p in paths if p.startswith(b"/proc/")]
    assert os.fsencode(src / "a") in paths

    result = run_backup(repo, sources=["/proc", str(src)], hostname="test-host", pack_size=1 << 18)
    assert result.status == "completed", result.warnings[:3]
    assert result.files == 1
    assert restore(repo, tmp_path / "out").status == "completed"
    assert os.listdir(tmp_path / "out" / "proc") == []
    assert tree_snapshot(restored(tmp_path / "out", src)) == tree_snapshot(src)


def test_the_walk_ahead_lstats_in_a_process_of_its_own_and_yields_the_same_items(
    tmp_path, monkeypatch
):
    # On a thread, every lstat of the walk gave the GIL up and took it back against the
    # backup's main thread: the two took turns on one core. In a process of its own the
    # walk's system calls are not the backup process's.
    src = tmp_path / "src"
    write_random(src / "a", 100, 1)
    write_random(src / "sub" / "b", 100, 2)
    os.symlink("a", src / "link")
    root = os.fsencode(src)
    expected = {p: st for p, st in walk([root], Excluder([]), lambda p, r: None)}
    here: list[bytes] = []
    original = os.lstat

    def lstat_here(path, *args, **kw):
        here.append(os.fsencode(path))
        return original(path, *args, **kw)

    monkeypatch.setattr(os, "lstat", lstat_here)
    walker = WalkAhead([src])
    try:
        items = {p: st for p, st, problem in walker if problem is None}
    finally:
        walker.close()
    assert here == []  # (the process's own calls are counted in its own copy of the list)
    assert items.keys() == expected.keys()
    for path, st in items.items():
        assert st == WalkStat.fields(expected[path])


class _WalkBroke(Exception):
    pass


def test_an_error_in_the_walk_s_process_is_raised_to_its_reader(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_random(src / "a", 100, 1)

    def broken_listdir(path):
        raise _WalkBroke(f"cannot list {path!r}")

    monkeypatch.setattr(os, "listdir", broken_listdir)
    walker = WalkAhead([src])
    try:
        with pytest.raises(_WalkBroke, match="cannot list"):
            list(walker)
    finally:
        walker.close()
