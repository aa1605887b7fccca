"""The walk: kernel and virtual file systems are not entered."""

from __future__ import annotations

import os

from agents.runtime.engine import run_backup
from agents.runtime.engine.scan import Excluder, pseudo_devices, walk
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
