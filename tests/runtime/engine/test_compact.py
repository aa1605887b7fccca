"""Compaction in the engine: the live chunks of wasteful packs move, byte for byte, into new
packs; the report says where every object went; once the old packs are deleted (here by the
test, as the portal would after its checks) every kept point restores byte for byte, with the
agent's index cache and without it."""

from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path

import pytest

from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.engine import Repository, run_backup, run_restore
from agents.runtime.engine.compact import CRASH_POINTS, run_compact
from agents.runtime.engine.layout import DATA_PREFIX, manifest_blob, pack_blob
from agents.runtime.engine.progress import ListSink
from tests.runtime.engine.conftest import PASSPHRASE, tree_snapshot
from tests.runtime.engine.helpers import GuardedStore

PACK = 256 * 1024


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Four backups of a tree that changes each time, then retention (the portal's) removes
    the first and the third point: built once, each test works on a copy."""
    root = tmp_path_factory.mktemp("compact")
    src, cache = root / "src", root / "cache"
    src.mkdir()
    store = LocalDirectoryStore(root / "store", create=True)
    repo = Repository.init(store, PASSPHRASE, kdf={"n": 2**10, "r": 8, "p": 1})
    rng = random.Random(7)
    trees = {}
    for i in range(4):
        for n in range(4):
            src.joinpath(f"f{n}.bin").write_bytes(rng.randbytes(60_000 + 1000 * i))
        src.joinpath("stable.bin").write_bytes(random.Random(1).randbytes(200_000))
        res = run_backup(repo, sources=[src], cache_dir=cache, pack_size=PACK, workers=1)
        trees[res.recovery_point] = tree_snapshot(src)
    for point in list(trees)[::2]:
        store.delete(manifest_blob(point))
        del trees[point]
    return root, trees


@pytest.fixture
def copy(made, tmp_path):
    """(store, kept points' trees, the source folder, the agent's cache) of a fresh copy."""
    root, trees = made
    for name in ("store", "cache"):
        shutil.copytree(root / name, tmp_path / name)
    store = GuardedStore(LocalDirectoryStore(tmp_path / "store"))
    return store, dict(trees), root / "src", tmp_path / "cache"


def _stored(store) -> int:
    return sum(b.size for b in store.list(DATA_PREFIX))


def test_compaction_moves_live_chunks_and_every_kept_point_restores(copy, tmp_path):
    store, trees, src, cache = copy
    before = _stored(store)

    sink = ListSink()
    result = run_compact(
        Repository.open(store, PASSPHRASE), pack_size=PACK, sink=sink, cache_dir=cache
    )

    assert result.status == "completed" and result.packs_rewritten > 0
    phases = {e.get("phase") for e in sink.of_type("progress")}
    assert {"scanning", "compacting"} <= phases
    assert sink.of_type("finished")[-1]["status"] == "completed"
    # every object of an old pack is in the report, and a moved one is the same bytes
    new_packs = [pack for pack, _size in result.report.new_packs]
    for old in result.report.packs:
        blob = store.get(pack_blob(old.pack))
        for obj in old.objects:
            if len(obj) == 4:
                off, length, new, new_off = obj
                moved = store.get_range(pack_blob(new_packs[new]), new_off, length)
                assert moved == blob[off : off + length]
    # a backup between the compaction and the deletion keeps an index cache that covers the
    # compaction's delta but holds each chunk's old copy
    res = run_backup(
        Repository.open(store, PASSPHRASE),
        sources=[src],
        cache_dir=cache,
        pack_size=PACK,
        workers=1,
    )
    trees[res.recovery_point] = tree_snapshot(src)
    # the portal's part: the old packs go
    for old in result.report.packs:
        store.backend.delete(pack_blob(old.pack))
    assert _stored(store) < before

    for use_cache in (True, False):
        reader = Repository.open(store, PASSPHRASE)
        reader.load_index(cache if use_cache else None)
        for point, tree in trees.items():
            target = tmp_path / f"restore-{use_cache}-{point}"
            run_restore(reader, recovery_point=point, target=target)
            assert tree_snapshot(target / str(src).lstrip("/")) == tree

    # nothing left to do: a second run finds no pack worth rewriting
    again = run_compact(Repository.open(store, PASSPHRASE), pack_size=PACK)
    assert again.status == "nothing"


def _apply(store, report) -> None:
    """The portal's part, reduced to what the engine relies on: the old packs go."""
    for old in report.packs:
        store.backend.delete(pack_blob(old.pack))


def _restore_all(store, trees: dict, src: Path, target: Path, cache: Path | None) -> None:
    reader = Repository.open(store, PASSPHRASE)
    reader.load_index(cache)
    for point, tree in trees.items():
        out = target / point
        run_restore(reader, recovery_point=point, target=out)
        assert tree_snapshot(out / str(src).lstrip("/")) == tree, point


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_compaction_killed_at_each_point_leaves_every_point_restorable(copy, tmp_path, point):
    """The agent is killed (SIGKILL, a real kill) before the new packs are uploaded, after
    the upload and before the index delta, or after the delta and before its report: every
    kept point restores byte for byte, and the next run finishes the work."""
    store, trees, src, cache = copy

    def kill(at: str) -> None:
        if at == point:
            os.kill(os.getpid(), signal.SIGKILL)

    child = os.fork()
    if child == 0:  # the agent's process
        try:
            run_compact(Repository.open(store, PASSPHRASE), pack_size=PACK, crash=kill)
        finally:
            os._exit(3)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    _restore_all(store, trees, src, tmp_path / "after-kill", cache)
    again = run_compact(Repository.open(store, PASSPHRASE), pack_size=PACK, cache_dir=cache)
    assert again.status == "completed" and again.packs_rewritten
    _apply(store, again.report)
    _restore_all(store, trees, src, tmp_path / "elsewhere", None)
