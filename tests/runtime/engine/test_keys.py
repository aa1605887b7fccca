"""Keys: passphrase-wrapped master key, KDF parameters, named failures, blob authentication."""

from __future__ import annotations

import json

import pytest

from agents.runtime.blobstore.memory import MemoryStore
from agents.runtime.engine import (
    DEFAULT_KDF,
    IntegrityError,
    InvalidArgument,
    Repository,
    RepositoryExists,
    RepositoryNotFound,
    WrongPassphrase,
    run_restore,
)
from agents.runtime.engine.layout import KEYS_PREFIX, manifest_blob
from tests.runtime.engine.conftest import FAST_KDF, PASSPHRASE, SMALL_CHUNKS, write_random
from tests.runtime.engine.helpers import GuardedStore, backup, contents, file_data_packs


def test_a_wrong_passphrase_is_a_clear_error_and_writes_nothing(
    repo, memory_store, source, tmp_path
):
    backup(repo, source)
    blobs = contents(memory_store)
    with pytest.raises(WrongPassphrase, match="passphrase does not open"):
        Repository.open(memory_store, "Correct horse battery staple")
    assert contents(memory_store) == blobs
    assert not (tmp_path / "out").exists()


def test_it_stores_the_kdf_parameters_beside_the_wrapped_key(memory_store):
    repo = Repository.init(memory_store, PASSPHRASE, kdf={"n": 2**11, "r": 4, "p": 2})
    (name,) = [b.name for b in memory_store.list(KEYS_PREFIX)]
    doc = json.loads(memory_store.get(name))
    assert doc["kdf"]["name"] == "scrypt"
    assert (doc["kdf"]["n"], doc["kdf"]["r"], doc["kdf"]["p"]) == (2**11, 4, 2)
    assert len(doc["kdf"]["salt"]) >= 20
    assert PASSPHRASE not in memory_store.get(name).decode()
    assert repo.kdf_params() == doc["kdf"]
    # The parameters beside the key are the ones used: changing them breaks the unwrap.
    doc["kdf"]["n"] = 2**10
    memory_store.backend.delete(name)
    memory_store.put(name, json.dumps(doc).encode())
    with pytest.raises(WrongPassphrase):
        Repository.open(memory_store, PASSPHRASE)


def test_the_default_kdf_is_memory_hard():
    assert DEFAULT_KDF["name"] == "scrypt"
    assert 128 * DEFAULT_KDF["n"] * DEFAULT_KDF["r"] >= 64 << 20  # >= 64 MiB, like restic


def test_init_refuses_an_existing_repository(repo, memory_store):
    with pytest.raises(RepositoryExists):
        Repository.init(memory_store, PASSPHRASE, kdf=FAST_KDF)


def test_open_of_an_empty_store_says_there_is_no_repository():
    with pytest.raises(RepositoryNotFound, match="no Haven repository"):
        Repository.open(GuardedStore(MemoryStore()), PASSPHRASE)


def test_an_empty_passphrase_is_refused():
    with pytest.raises(InvalidArgument, match="empty"):
        Repository.init(GuardedStore(MemoryStore()), "", kdf=FAST_KDF)


def test_a_pack_swapped_for_another_is_detected(repo, memory_store, tmp_path):
    src = tmp_path / "src"
    write_random(src / "a", 300_000, 1)
    write_random(src / "b", 300_000, 2)
    result = backup(repo, src)
    packs = file_data_packs(repo, src)
    assert len(packs) >= 2
    a, b = packs[:2]
    data_a, data_b = memory_store.get(a), memory_store.get(b)
    memory_store.backend.delete(a)
    memory_store.backend.delete(b)
    memory_store.put(a, data_b)
    memory_store.put(b, data_a)
    res = run_restore(repo, recovery_point=result.recovery_point, target=tmp_path / "out")
    # the swapped packs fail authentication (the pack id is bound) instead of restoring wrong data
    assert res.status == "completed_with_warnings"
    assert {f["path"].rsplit("/", 1)[1] for f in res.failed} >= {"a"} or res.failed


def test_a_manifest_swapped_under_another_name_is_rejected(repo, memory_store, source):
    first = backup(repo, source)
    second = backup(repo, source)
    swapped = memory_store.get(manifest_blob(first.recovery_point))
    memory_store.backend.delete(manifest_blob(second.recovery_point))
    memory_store.put(manifest_blob(second.recovery_point), swapped)
    with pytest.raises(IntegrityError):
        repo.list_recovery_points()


def test_chunk_ids_are_keyed_so_equal_data_gets_different_ids_per_repository():
    one = Repository.init(
        GuardedStore(MemoryStore()), PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS
    )
    two = Repository.init(
        GuardedStore(MemoryStore()), PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS
    )
    assert one.chunk_id(b"same") != two.chunk_id(b"same")
