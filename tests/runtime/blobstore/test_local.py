"""What the local-directory backend adds to the contract: atomic writes and safe names."""

from __future__ import annotations

import pytest

from agents.runtime.blobstore import BlobExists, ContainerNotFound, InvalidBlobName
from agents.runtime.blobstore.local import IncompleteUpload, LocalDirectoryStore


@pytest.fixture
def store(tmp_path):
    return LocalDirectoryStore(tmp_path / "c", create=True)


def test_a_put_leaves_no_temporary_file_behind(store):
    store.put("packs/aa/1", b"x" * 1000)
    with pytest.raises(BlobExists):
        store.put("packs/aa/1", b"y")
    store.put("packs/aa/1", b"x" * 1000)
    assert (store.root / "packs/aa/1").read_bytes() == b"x" * 1000
    assert list((store.root / ".haven" / "tmp").iterdir()) == []


def test_a_failed_stream_keeps_the_old_blob_and_no_temporary_file(store):
    store.put("index/0", b"old")
    with pytest.raises(IncompleteUpload, match="ended after 3 of 10 bytes"):
        store.put_stream("index/0", [b"new"], length=10)
    assert store.get("index/0") == b"old"
    assert list((store.root / ".haven" / "tmp").iterdir()) == []


@pytest.mark.parametrize("name", ["..", "../x", "a/../../x", "/etc/passwd", "a\x00", "a\\..\\b"])
def test_names_cannot_escape_the_directory(store, name):
    with pytest.raises(InvalidBlobName):
        store.put(name, b"x")
    with pytest.raises(InvalidBlobName):
        store.get(name)
    assert not (store.root.parent / "x").exists()


def test_the_bookkeeping_folder_is_reserved_and_unlisted(store):
    with pytest.raises(InvalidBlobName, match="reserved"):
        store.put(".haven/tmp/evil", b"x")
    store.put(".havenish", b"fine")
    assert [i.name for i in store.list()] == [".havenish"]


def test_a_listing_prefix_cannot_walk_outside(store, tmp_path):
    (tmp_path / "outside").write_bytes(b"secret")
    assert list(store.list("../")) == []
    assert list(store.list("../outside")) == []


def test_delete_prunes_folders_it_empties(store):
    store.put("packs/aa/1", b"x")
    store.put("packs/bb/2", b"x")
    store.delete("packs/aa/1")
    assert not (store.root / "packs" / "aa").exists()
    assert (store.root / "packs" / "bb").is_dir()


def test_a_name_cannot_be_a_blob_and_a_folder(store):
    store.put("a/b", b"x")
    with pytest.raises(InvalidBlobName, match="both a blob and a folder"):
        store.put("a", b"y")


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(ContainerNotFound, match=str(tmp_path / "gone")):
        LocalDirectoryStore(tmp_path / "gone")
    store = LocalDirectoryStore(tmp_path / "there", create=True)
    (tmp_path / "there").rename(tmp_path / "moved")
    with pytest.raises(ContainerNotFound):
        store.put("a", b"x")
    with pytest.raises(ContainerNotFound):
        list(store.list())
