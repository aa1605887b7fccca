"""A restore reads the portal's storage endpoint from several writer processes at once."""

from __future__ import annotations

import multiprocessing

import pytest

from agents.runtime.engine import Repository, run_backup, run_restore
from tests.runtime.engine.conftest import (
    FAST_KDF,
    PASSPHRASE,
    SMALL_CHUNKS,
    restored,
    tree_snapshot,
    write_random,
)

pytestmark = pytest.mark.urls("tests.vaults.storage.urls")


@pytest.fixture
def store(grant_store):
    return grant_store


def _child_session_is_new(store, parent_session_id, out) -> None:
    out.put(id(store._session()) != parent_session_id and len(store._sessions) == 1)


def test_a_forked_child_opens_its_own_connections(store):
    store.put("index/a", b"x")  # the parent now holds a pooled connection
    ctx = multiprocessing.get_context("fork")
    out = ctx.SimpleQueue()
    p = ctx.Process(target=_child_session_is_new, args=(store, id(store._session()), out))
    p.start()
    p.join(10)
    assert out.get() is True
    assert store.get("index/a") == b"x"  # and the parent's still works


def test_a_restore_over_the_portal_uses_writer_processes_and_is_exact(store, tmp_path):
    assert store.fork_safe_reads
    repo = Repository.init(store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    for i in range(40):
        write_random(src / f"d{i % 4}" / f"f{i:02}", 30_000 + i * 997, i)
    assert run_backup(repo, sources=[src], pack_size=128 * 1024).status == "completed"
    res = run_restore(repo, recovery_point="latest", target=tmp_path / "out", writers=2)
    assert res.status == "completed" and res.files == 40
    assert tree_snapshot(restored(tmp_path / "out", src)) == tree_snapshot(src)
