"""Back up and restore trees with every kind of item, on every available store."""

from __future__ import annotations

import os
import random
import struct
import time

from agents.runtime.blobstore.throttle import ThrottledStore
from agents.runtime.engine import Repository, run_backup, run_verify
from tests.runtime.engine.conftest import (
    FAST_KDF,
    PASSPHRASE,
    SMALL_CHUNKS,
    restored,
    tree_snapshot,
    write_random,
)
from tests.runtime.engine.helpers import backup, restore


def test_it_restores_a_mixed_tree_exactly_on_every_store(any_store, source, tmp_path):
    repo = Repository.init(any_store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    os.chmod(source / "sub" / "a.dat", 0o640)
    os.utime(source / "text.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    result = backup(repo, source)
    assert result.status == "completed"
    assert result.files == 4 and result.symlinks == 1
    assert result.logical_bytes == 300_000 + 240_000 + 5_000

    other_machine = Repository.open(any_store, PASSPHRASE)  # only the store and the passphrase
    res = restore(other_machine, tmp_path / "out")
    assert res.status == "completed"
    assert tree_snapshot(restored(tmp_path / "out", source)) == tree_snapshot(source)
    assert run_verify(other_machine).ok


def test_it_restores_names_with_newlines_and_invalid_utf8(any_repo, tmp_path):
    repo = any_repo
    src = tmp_path / "src"
    src.mkdir()
    odd = [b"line\nbreak.txt", b"latin1-\xe9t\xe9", b"\xff\xfe", b"tab\tand space ", b"-dash"]
    for i, name in enumerate(odd):
        with open(os.path.join(os.fsencode(src), name), "wb") as f:
            f.write(b"content %d" % i)
    os.mkdir(os.path.join(os.fsencode(src), b"dir\nwith\xffname"))
    backup(repo, src)
    restore(repo, tmp_path / "out")
    assert tree_snapshot(restored(tmp_path / "out", src)) == tree_snapshot(src)


def test_it_restores_deep_trees(repo, tmp_path):
    src = tmp_path / "src"
    deep = src
    for i in range(150):  # deeper than the default recursion limit would allow nested calls
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "leaf.txt").write_text("bottom")
    backup(repo, src)
    restore(repo, tmp_path / "out")
    assert (
        restored(tmp_path / "out", src).joinpath(deep.relative_to(src)) / "leaf.txt"
    ).read_text() == "bottom"


def test_it_keeps_empty_files_and_empty_folders(repo, tmp_path):
    src = tmp_path / "src"
    (src / "empty-dir" / "nested-empty").mkdir(parents=True)
    (src / "zero").touch()
    backup(repo, src)
    restore(repo, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert (out / "empty-dir" / "nested-empty").is_dir()
    assert (out / "zero").read_bytes() == b""


def test_it_stores_hard_links_once_and_restores_them_as_links(any_repo, tmp_path):
    repo = any_repo
    src = tmp_path / "src"
    data = write_random(src / "a", 200_000, 7)
    os.link(src / "a", src / "b")
    (src / "sub").mkdir()
    os.link(src / "a", src / "sub" / "c")
    result = backup(repo, src)
    assert result.files == 1 and result.logical_bytes == 200_000
    restore(repo, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert (out / "b").read_bytes() == data
    assert (
        os.stat(out / "a").st_ino == os.stat(out / "b").st_ino == os.stat(out / "sub" / "c").st_ino
    )


def test_it_restores_a_hard_link_alone_as_a_file(repo, tmp_path):
    src = tmp_path / "src"
    data = write_random(src / "a", 50_000, 8)
    os.link(src / "a", src / "b")
    backup(repo, src)
    restore(repo, tmp_path / "out", paths=[str(src / "b")])
    out = restored(tmp_path / "out", src)
    assert (out / "b").read_bytes() == data
    assert not (out / "a").exists()


def test_it_backs_up_a_huge_sparse_file_quickly_and_restores_it_sparse(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = src / "disk.img"
    with open(path, "wb") as f:
        f.truncate(2 << 30)  # 2 GiB, almost all hole
        f.seek(1 << 30)
        f.write(b"in the middle")
        f.seek((2 << 30) - 5)
        f.write(b"tail!")
    started = time.monotonic()
    result = backup(repo, src)
    assert result.logical_bytes == 2 << 30
    assert result.new_bytes < 1 << 20
    restore(repo, tmp_path / "out")
    assert time.monotonic() - started < 20
    out = restored(tmp_path / "out", src) / "disk.img"
    st = os.stat(out)
    assert st.st_size == 2 << 30
    assert st.st_blocks * 512 < 1 << 20  # still sparse
    with open(out, "rb") as f:
        f.seek(1 << 30)
        assert f.read(13) == b"in the middle"
        f.seek((2 << 30) - 5)
        assert f.read() == b"tail!"
        f.seek(12345)
        assert f.read(100) == bytes(100)


def test_it_restores_modes_and_times_of_files_folders_and_links(repo, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x").write_text("x")
    os.chmod(src / "d" / "x", 0o4751)
    os.symlink("nowhere", src / "dangling")
    os.utime(src / "dangling", ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001),
             follow_symlinks=False)  # fmt: skip
    os.chmod(src / "d", 0o750)
    os.utime(src / "d", ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_000))
    backup(repo, src)
    restore(repo, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    assert os.stat(out / "d" / "x").st_mode & 0o7777 == 0o4751
    assert os.stat(out / "d").st_mtime_ns == 1_400_000_000_000_000_000
    assert os.stat(out / "d").st_mode & 0o7777 == 0o750
    assert os.readlink(out / "dangling") == "nowhere"
    assert os.lstat(out / "dangling").st_mtime_ns == 1_500_000_000_000_000_001


def test_it_restores_owner_when_asked(repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.chown(src / "f", 1234, 4321)
    backup(repo, src)
    restore(repo, tmp_path / "out", restore_owner=True)
    st = os.stat(restored(tmp_path / "out", src) / "f")
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_it_excludes_globs_extensions_and_paths(repo, tmp_path):
    src = tmp_path / "src"
    for rel in ["keep.txt", "skip.tmp", "movie.ISO", "__pycache__/x.pyc", "a/cache/big", "a/keep"]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    backup(repo, src, excludes=["*.tmp", ".iso", "__pycache__", f"{src}/a/cache"])
    restore(repo, tmp_path / "out")
    out = restored(tmp_path / "out", src)
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert names == ["a", "a/keep", "keep.txt"]


def test_it_backs_up_several_sources_and_restores_a_subset(repo, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write_random(one / "f1", 1000, 1)
    write_random(two / "sub" / "f2", 1000, 2)
    write_random(two / "other", 1000, 3)
    run_backup(repo, sources=[one, two, two / "sub"], hostname="h")
    res = restore(repo, tmp_path / "out", paths=[str(two / "sub")])
    assert res.files == 1
    out = tmp_path / "out"
    assert restored(out, two / "sub" / "f2").exists()
    assert not restored(out, two / "other").exists()
    assert not restored(out, one).exists()


def test_parallel_restore_threads_restore_compressible_files_exactly(repo, tmp_path):
    # zstandard objects are not thread-safe: this caught a shared decompressor corrupting data
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(3)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(500)]
    for i in range(16):
        (src / f"log{i:02}.txt").write_bytes(b" ".join(rng.choice(words) for _ in range(150_000)))
    backup(repo, src)
    res = restore(repo, tmp_path / "out", writers=4)
    assert res.status == "completed", res.failed[:2]
    assert tree_snapshot(restored(tmp_path / "out", src)) == tree_snapshot(src)


def test_a_store_that_forked_readers_cannot_share_restores_on_threads(memory_store, tmp_path):
    """A download limit must hold for all readers together, so such a store is read by
    writer threads in this process instead of writer processes; the result is the same."""
    store = ThrottledStore(memory_store, download_bytes_per_second=1 << 30)
    assert not store.fork_safe_reads and memory_store.fork_safe_reads
    repo = Repository.init(store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    src = tmp_path / "src"
    for i in range(30):
        write_random(src / "d" / f"f{i:02}", 50_000 + i, i)
    os.link(src / "d" / "f00", src / "hard")
    backup(repo, src)
    res = restore(repo, tmp_path / "out", writers=3)
    assert res.status == "completed" and res.files == 31
    out = restored(tmp_path / "out", src)
    assert tree_snapshot(out) == tree_snapshot(src)
    assert os.stat(out / "hard").st_ino == os.stat(out / "d" / "f00").st_ino


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as the kernel stores it in ``system.posix_acl_access`` (version 2)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_it_restores_extended_attributes_and_acls(repo, tmp_path):
    src = tmp_path / "src"
    write_random(src / "doc.txt", 5000, 1)
    (src / "shared").mkdir()
    os.setxattr(src / "doc.txt", "user.origin", b"scanner 7")
    os.setxattr(src / "shared", "user.project", b"apollo")
    # owner rw, user 1234 read, group read, mask read, others nothing
    acl = _acl((0x01, 6, 0xFFFFFFFF), (0x02, 4, 1234), (0x04, 4, 0xFFFFFFFF),
               (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF))  # fmt: skip
    os.setxattr(src / "doc.txt", "system.posix_acl_access", acl)
    os.setxattr(src / "shared", "system.posix_acl_default", acl)
    first = backup(repo, src)
    assert first.status == "completed", first.warnings[:3]

    res = restore(repo, tmp_path / "out", restore_owner=True)
    assert res.status == "completed", res.warnings[:3]
    out = restored(tmp_path / "out", src)
    assert os.getxattr(out / "doc.txt", "user.origin") == b"scanner 7"
    assert os.getxattr(out / "shared", "user.project") == b"apollo"
    assert os.getxattr(out / "doc.txt", "system.posix_acl_access") == acl
    assert os.getxattr(out / "shared", "system.posix_acl_default") == acl
    assert tree_snapshot(out) == tree_snapshot(src)

    # a second, unchanged backup carries them over as they were
    second = backup(repo, src)
    assert second.files_unchanged == 1
    res = restore(repo, tmp_path / "again", restore_owner=False)
    out = restored(tmp_path / "again", src)
    assert os.getxattr(out / "doc.txt", "user.origin") == b"scanner 7"
    # permissions were not asked for: no ACL
    assert "system.posix_acl_access" not in os.listxattr(out / "doc.txt")
