"""The behaviour every ``BlobStore`` backend must share (restic-style: one suite, every
backend). A test module subclasses ``BlobStoreContract`` and provides a ``store`` fixture
that yields an empty store with full rights (delete included)."""

from __future__ import annotations

import contextlib
import random
import threading
from datetime import datetime

import pytest

from agents.runtime.blobstore import (
    BlobExists,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    InvalidBlobName,
)

MiB = 1024 * 1024


def random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


class BlobStoreContract:
    def test_it_reads_back_what_was_put(self, store: BlobStore):
        store.put("config", b"hello")
        assert store.get("config") == b"hello"

    def test_it_stores_an_empty_blob(self, store: BlobStore):
        store.put("empty", b"")
        assert store.get("empty") == b""
        assert store.exists("empty")
        assert [(i.name, i.size) for i in store.list("empty")] == [("empty", 0)]

    def test_it_accepts_a_memoryview_and_copies_it(self, store: BlobStore):
        buffer = bytearray(b"abcdef")
        store.put("view", memoryview(buffer)[1:4])
        buffer[:] = b"XXXXXX"  # the engine reuses its buffers
        assert store.get("view") == b"bcd"

    def test_get_range_returns_the_slice(self, store: BlobStore):
        store.put("pack", b"0123456789")
        assert store.get_range("pack", 0, 4) == b"0123"
        assert store.get_range("pack", 3, 4) == b"3456"
        assert store.get_range("pack", 8, 10) == b"89"  # fewer at the end
        assert store.get_range("pack", 10, 5) == b""
        assert store.get_range("pack", 50, 5) == b""
        assert store.get_range("pack", 2, 0) == b""

    def test_get_range_of_a_missing_blob_is_not_found(self, store: BlobStore):
        with pytest.raises(BlobNotFound):
            store.get_range("missing", 0, 4)
        with pytest.raises(BlobNotFound):
            store.get_range("missing", 0, 0)

    def test_get_of_a_missing_blob_names_it(self, store: BlobStore):
        with pytest.raises(BlobNotFound) as caught:
            store.get("nope/never")
        assert caught.value.name == "nope/never"
        assert "nope/never" in str(caught.value)

    def test_exists(self, store: BlobStore):
        assert not store.exists("a")
        store.put("a", b"1")
        assert store.exists("a")
        assert not store.exists("b")

    def test_list_is_in_name_order_and_filters_by_prefix(self, store: BlobStore):
        for name in ["b", "a/2", "ab", "a/1", "a-1", "index/x", "a/sub/3"]:
            store.put(name, name.encode())
        assert [i.name for i in store.list()] == [
            "a-1", "a/1", "a/2", "a/sub/3", "ab", "b", "index/x",
        ]  # fmt: skip
        assert [i.name for i in store.list("a")] == ["a-1", "a/1", "a/2", "a/sub/3", "ab"]
        assert [i.name for i in store.list("a/")] == ["a/1", "a/2", "a/sub/3"]
        assert [i.name for i in store.list("a/s")] == ["a/sub/3"]
        assert list(store.list("zzz")) == []
        assert list(store.list("a/nothing/")) == []

    def test_list_reports_size_and_an_aware_modified_time(self, store: BlobStore):
        store.put("snapshots/1", b"x" * 1234)
        [info] = list(store.list("snapshots/"))
        assert isinstance(info, BlobInfo)
        assert (info.name, info.size) == ("snapshots/1", 1234)
        assert isinstance(info.modified, datetime) and info.modified.utcoffset() is not None

    def test_list_of_an_empty_store_is_empty(self, store: BlobStore):
        assert list(store.list()) == []

    def test_delete_removes_the_blob(self, store: BlobStore):
        store.put("packs/ab/abc", b"data")
        store.put("packs/ab/abd", b"data")
        store.delete("packs/ab/abc")
        assert not store.exists("packs/ab/abc")
        assert [i.name for i in store.list()] == ["packs/ab/abd"]
        with pytest.raises(BlobNotFound):
            store.get("packs/ab/abc")

    def test_delete_of_a_missing_blob_is_not_found(self, store: BlobStore):
        with pytest.raises(BlobNotFound):
            store.delete("missing")

    def test_put_never_overwrites(self, store: BlobStore):
        store.put("index/0", b"old contents, longer")
        for other in (b"new", b"old contents, LONGER", b""):
            with pytest.raises(BlobExists) as caught:
                store.put("index/0", other)
            assert caught.value.name == "index/0"
        assert store.get("index/0") == b"old contents, longer"
        assert [(i.name, i.size) for i in store.list()] == [("index/0", 20)]

    def test_put_of_the_same_bytes_again_succeeds(self, store: BlobStore):
        # A retried create whose first try landed (its answer lost) must not fail a backup.
        data = random_bytes(100_000, seed=3)
        store.put("packs/aa/retried", data)
        store.put("packs/aa/retried", memoryview(data))
        assert store.get("packs/aa/retried") == data

    def test_a_large_blob_round_trips(self, store: BlobStore):
        data = random_bytes(20 * MiB)
        store.put("packs/big", data)
        assert store.get("packs/big") == data
        # A range across a 4 MiB block boundary, and the tail.
        assert store.get_range("packs/big", 4 * MiB - 10, 20) == data[4 * MiB - 10 : 4 * MiB + 10]
        assert store.get_range("packs/big", 20 * MiB - 5, 100) == data[-5:]
        assert [(i.name, i.size) for i in store.list("packs/")] == [("packs/big", 20 * MiB)]

    def test_names_with_slashes_and_unusual_characters(self, store: BlobStore):
        names = ["packs/00/00ff", "with space/ü-ñ.txt", "a+b=c&d%20e?f#g", "deep/a/b/c/d/e"]
        for i, name in enumerate(names):
            store.put(name, bytes([i]) * 3)
        for i, name in enumerate(names):
            assert store.get(name) == bytes([i]) * 3
            assert store.exists(name)
        assert [i.name for i in store.list()] == sorted(names)

    @pytest.mark.parametrize("name", ["", "../escape", "a/../../b", "/absolute", "a\x00b", "a//b"])
    def test_it_refuses_unsafe_names(self, store: BlobStore, name: str):
        with pytest.raises(InvalidBlobName):
            store.put(name, b"x")

    def test_concurrent_puts_from_threads(self, store: BlobStore):
        errors: list[BaseException] = []
        expected: dict[str, bytes] = {}

        def work(worker: int) -> None:
            try:
                for n in range(6):
                    name = f"packs/{worker:02d}/{n:02d}"
                    store.put(name, random_bytes(64 * 1024 + n, seed=worker * 100 + n))
                    # Racing creates of one name: one wins, the others are refused.
                    with contextlib.suppress(BlobExists):
                        store.put(f"shared/{n}", bytes([worker]) * 100)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        for worker in range(8):
            for n in range(6):
                expected[f"packs/{worker:02d}/{n:02d}"] = random_bytes(
                    64 * 1024 + n, seed=worker * 100 + n
                )
        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [i.name for i in store.list("packs/")] == sorted(expected)
        for name, data in expected.items():
            assert store.get(name) == data
        for n in range(6):
            blob = store.get(f"shared/{n}")
            assert len(blob) == 100 and len(set(blob)) == 1  # one writer's whole blob
