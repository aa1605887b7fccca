"""A restore never creates privilege: set-user-id, set-group-id, a shared folder's sticky bit
and file capabilities come back only with their recorded owner.

Run as root (the agent's usual user): each test gives the backed-up items to another uid, as a
user's own files are, and restores them the way the portal does by default (permissions not
restored) on both kinds of writers (forked processes on local storage, threads otherwise).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import struct
import tempfile
from pathlib import Path

import pytest

from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.blobstore.throttle import ThrottledStore
from agents.runtime.engine import Repository
from agents.runtime.engine.format import FILE, Entry
from tests.runtime.engine.conftest import FAST_KDF, PASSPHRASE, SMALL_CHUNKS, restored
from tests.runtime.engine.helpers import GuardedStore, backup, craft_recovery_point, restore

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: gives files to users"),
    # The agent's engine on local files: no database, no server, no portal setting.
    pytest.mark.serverless,
]

USER = 4321  # an ordinary user of the backed-up machine (no name here: kept by number)
# security.capability, revision 2, effective: CAP_NET_BIND_SERVICE (10) permitted
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


@pytest.fixture(params=["processes", "threads"])
def repo(request, tmp_path) -> Repository:
    if request.param == "processes":  # a local store's reads are fork-safe: forked writers
        store = GuardedStore(LocalDirectoryStore(tmp_path / "store", create=True))
    else:  # a download limit: writers on threads
        local = LocalDirectoryStore(tmp_path / "store", create=True)
        store = GuardedStore(ThrottledStore(local, download_bytes_per_second=10**12))
    assert store.fork_safe_reads == (request.param == "processes")
    return Repository.init(store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


def special_bits(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


def a_users_tree(root: Path) -> Path:
    """What a user may legitimately own: a set-uid program, a set-gid one, a set-gid folder,
    a shared folder (1777), a program with a capability (put there by root), hard links."""
    src = root / "home"
    (src / "bin").mkdir(parents=True)
    (src / "team").mkdir()
    (src / "drop").mkdir()
    for name in ("suid", "sgid", "capable"):
        (src / "bin" / name).write_bytes(b"#!/bin/sh\nid\n")
    os.link(src / "bin" / "suid", src / "suid-link")
    for p in [src, *src.rglob("*")]:
        os.chown(p, USER, USER, follow_symlinks=False)
    os.chmod(src / "bin" / "suid", 0o4755)
    os.chmod(src / "bin" / "sgid", 0o2755)
    os.chmod(src / "bin" / "capable", 0o755)
    os.chmod(src / "team", 0o2775)
    os.chmod(src / "drop", 0o1777)
    os.setxattr(src / "bin" / "capable", "security.capability", CAPABILITY)
    return src


def test_a_restore_without_permissions_never_gives_back_a_root_owned_set_id_program(repo, tmp_path):
    src = a_users_tree(tmp_path)
    backup(repo, src)

    res = restore(repo, tmp_path / "out", restore_owner=False)

    assert res.status == "completed", res.failed
    out = restored(tmp_path / "out", src)
    for name in ("bin/suid", "bin/sgid", "suid-link", "bin/capable"):
        st = os.lstat(out / name)
        assert st.st_uid == 0  # the agent's own user: the owner was not restored
        assert st.st_mode & 0o7777 == 0o755, name  # set-id bits gone, the rest kept
    assert os.lstat(out / "bin" / "suid").st_ino == os.lstat(out / "suid-link").st_ino
    assert special_bits(out / "team") == 0o775
    # a root-owned sticky folder everybody may write to would be a shared folder nobody
    # asked for: without its owner it is neither
    assert special_bits(out / "drop") == 0o775
    assert "security.capability" not in os.listxattr(out / "bin" / "capable")


def test_a_restore_with_permissions_gives_set_id_bits_back_with_their_owner(repo, tmp_path):
    src = a_users_tree(tmp_path)
    backup(repo, src)

    res = restore(repo, tmp_path / "out", restore_owner=True)

    assert res.status == "completed", res.failed
    out = restored(tmp_path / "out", src)
    assert (os.lstat(out / "bin" / "suid").st_uid, special_bits(out / "bin" / "suid")) == (
        USER,
        0o4755,
    )
    assert special_bits(out / "suid-link") == 0o4755
    assert special_bits(out / "bin" / "sgid") == 0o2755
    assert special_bits(out / "team") == 0o2775
    assert special_bits(out / "drop") == 0o1777
    assert os.getxattr(out / "bin" / "capable", "security.capability") == CAPABILITY


def test_overwriting_an_existing_file_does_not_make_a_set_uid_program(repo, tmp_path):
    src = a_users_tree(tmp_path)
    backup(repo, src)
    out = restored(tmp_path / "out", src)
    (out / "bin").mkdir(parents=True)
    (out / "bin" / "suid").write_bytes(b"old")

    restore(repo, tmp_path / "out", restore_owner=False, on_conflict="overwrite")

    assert (out / "bin" / "suid").read_bytes() == b"#!/bin/sh\nid\n"
    assert special_bits(out / "bin" / "suid") == 0o755


def test_a_recorded_owner_of_minus_one_does_not_keep_a_root_owned_set_uid_file(repo, tmp_path):
    """chown(-1, -1) changes nothing: a crafted entry with that owner would otherwise leave
    the file root's, set-uid, with permissions restored."""
    src = tmp_path / "seed"
    src.mkdir()
    (src / "x").write_bytes(b"pwned")
    backup(repo, src)
    cid = repo.chunk_id(b"pwned")
    evil = Entry(path=b"/evil", kind=FILE, mode=stat.S_IFREG | 0o4755, uid=0xFFFFFFFF,
                 gid=0xFFFFFFFF, size=5, content=[(cid, 5)])  # fmt: skip
    rp = craft_recovery_point(repo, [evil])

    res = restore(repo, tmp_path / "out", recovery_point=rp, restore_owner=True)

    assert (tmp_path / "out" / "evil").read_bytes() == b"pwned"
    assert special_bits(tmp_path / "out" / "evil") == 0o755
    assert any("owner not restored" in w["reason"] for w in res.warnings)


def _restore_as_a_normal_user(repo_dir: Path, target: Path, uid: int) -> None:
    os.setgid(uid)
    os.setuid(uid)
    repo = Repository.open(GuardedStore(LocalDirectoryStore(repo_dir)), PASSPHRASE)
    res = restore(repo, target, restore_owner=True)
    assert res.status == "completed_with_warnings"


@pytest.fixture
def open_tmp():
    """A folder another user can reach (pytest's are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="haven-agent-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


def test_a_normal_user_restoring_with_permissions_does_not_get_roots_set_uid_bit(open_tmp):
    """The chown to root fails for a normal user: the file is theirs, so no set-uid."""
    tmp_path = open_tmp
    store_dir = tmp_path / "store"
    repo = Repository.init(
        GuardedStore(LocalDirectoryStore(store_dir, create=True)),
        PASSPHRASE,
        kdf=FAST_KDF,
        chunker=SMALL_CHUNKS,
    )
    src = tmp_path / "src"
    (src / "shared").mkdir(parents=True)
    (src / "shared" / "su").write_bytes(b"root's program")
    os.chmod(src / "shared" / "su", 0o4755)
    os.chmod(src / "shared", 0o3777)
    backup(repo, src)
    target = tmp_path / "out"
    target.mkdir()
    os.chown(target, USER, USER)
    for p in [store_dir, *store_dir.rglob("*")]:
        os.chown(p, USER, USER)

    child = multiprocessing.get_context("fork").Process(
        target=_restore_as_a_normal_user, args=(store_dir, target, USER)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0

    out = restored(target, src)
    assert os.lstat(out / "shared" / "su").st_uid == USER
    assert special_bits(out / "shared" / "su") == 0o755
    assert special_bits(out / "shared") == 0o775


def test_roots_own_set_uid_program_and_shared_folder_keep_their_bits_without_permissions(
    repo, tmp_path
):
    """Restoring root's files as root (the original location, say): their recorded owner
    owns them, so nothing is created and nothing is taken away (/tmp stays 1777)."""
    src = tmp_path / "sys"
    (src / "tmp").mkdir(parents=True)
    (src / "su").write_bytes(b"root's program")
    os.chmod(src / "su", 0o4755)
    os.chmod(src / "tmp", 0o1777)
    backup(repo, src)
    target = tmp_path / "out"
    (restored(target, src) / "tmp").mkdir(parents=True)  # already there, as /tmp would be

    restore(repo, target, restore_owner=False)

    out = restored(target, src)
    assert special_bits(out / "su") == 0o4755
    assert special_bits(out / "tmp") == 0o1777
