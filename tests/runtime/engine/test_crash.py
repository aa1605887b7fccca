"""SIGKILL at any moment leaves a valid repository, and the next run reuses what was uploaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.engine import Repository, run_verify
from tests.runtime.engine.conftest import (
    FAST_KDF,
    PASSPHRASE,
    SMALL_CHUNKS,
    restored,
    tree_snapshot,
    write_random,
)
from tests.runtime.engine.helpers import GuardedStore, backup, restore

REPO_ROOT = Path(__file__).resolve().parents[3]

CHILD = """
import sys, time
from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.engine import Repository, run_backup
from agents.runtime.engine.layout import DATA_PREFIX
from tests.runtime.engine.helpers import GuardedStore

class SlowStore(GuardedStore):
    def put(self, name, data):
        if name.startswith(DATA_PREFIX):
            time.sleep(0.03)  # a slow uplink, so the kill lands mid-backup
        super().put(name, data)

repo = Repository.open(SlowStore(LocalDirectoryStore(sys.argv[1])), sys.argv[3])
print("started", flush=True)
run_backup(repo, sources=[sys.argv[2]], hostname="test-host", pack_size=256 * 1024)
print("finished", flush=True)
"""


def _marker_processes(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def test_it_survives_sigkill_mid_backup_and_resumes(tmp_path):
    store_dir = tmp_path / "store"
    store = GuardedStore(LocalDirectoryStore(store_dir, create=True))
    repo = Repository.init(store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    write_random(src / "small", 50_000, 1)
    first = backup(repo, src)
    before = tree_snapshot(src)
    for i in range(40):
        write_random(src / "big" / f"f{i:02}", 1_000_000, 100 + i)

    marker = f"haven-crash-{os.getpid()}-{time.monotonic_ns()}"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store_dir), str(src), PASSPHRASE, marker],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 30
    packs = store_dir / "data"
    while time.monotonic() < deadline:
        if packs.exists() and sum(1 for f in packs.rglob("*") if f.is_file()) >= 20:
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)  # the main process only: its workers must follow it
    child.wait()
    assert child.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _marker_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _marker_processes(marker) == [], "worker processes outlived the killed backup"

    # The repository is valid: the old recovery point is the only one and restores.
    reopened = Repository.open(GuardedStore(LocalDirectoryStore(store_dir)), PASSPHRASE)
    rps = reopened.list_recovery_points()
    assert [rp.id for rp in rps] == [first.recovery_point]
    restore(reopened, tmp_path / "old", recovery_point=first.recovery_point)
    assert tree_snapshot(restored(tmp_path / "old", src)) == before
    assert run_verify(reopened).ok

    # The next run reuses the uploaded packs: only what was not stored is stored now.
    uploaded = sum(f.stat().st_size for f in packs.rglob("*") if f.is_file())
    resumed = backup(reopened, src)
    assert resumed.status == "completed"
    assert uploaded > 4_000_000
    assert resumed.new_bytes < 40_000_000 - uploaded + 2 * 256 * 1024 + 600_000
    restore(reopened, tmp_path / "new")
    assert tree_snapshot(restored(tmp_path / "new", src)) == tree_snapshot(src)
    assert run_verify(reopened).ok
