"""Engine test fixtures: the product's stores (memory, local directory, the agent's wrappers,
Azure via Azurite), each behind ``GuardedStore``; fast KDF and small chunk/pack sizes so the
tests run in seconds."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.blobstore.memory import MemoryStore
from agents.runtime.blobstore.retry import RetryingStore
from agents.runtime.blobstore.throttle import ThrottledStore
from agents.runtime.engine import ChunkerParams, Repository
from tests.runtime.engine.helpers import GuardedStore

FAST_KDF = {"n": 2**10, "r": 8, "p": 1}
SMALL_CHUNKS = ChunkerParams(min_size=4 * 1024, avg_size=16 * 1024, max_size=64 * 1024)
PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def memory_store() -> GuardedStore:
    return GuardedStore(MemoryStore())


def _azure_store(request):
    azure = pytest.importorskip("agents.runtime.blobstore.azure")
    from azure.storage.blob import ContainerClient

    conn = request.getfixturevalue("azurite")
    container = f"engine{os.urandom(6).hex()}"
    ContainerClient.from_connection_string(conn, container).create_container()
    store = azure.AzureBlobStore.from_connection_string(conn, container)
    request.addfinalizer(store.close)
    return store


@pytest.fixture(params=["memory", "local", "wrapped", "azure"])
def any_store(request, tmp_path) -> GuardedStore:
    """The core round trips run on every backend: in memory, a local directory, a local
    directory behind the agent's retry and bandwidth wrappers (as ``checks`` stacks them; a
    download limit means restore writers on threads), and Azure via Azurite."""
    if request.param == "memory":
        return GuardedStore(MemoryStore())
    if request.param == "local":
        return GuardedStore(LocalDirectoryStore(tmp_path / "local-store", create=True))
    if request.param == "wrapped":
        local = LocalDirectoryStore(tmp_path / "wrapped-store", create=True)
        return GuardedStore(
            ThrottledStore(
                RetryingStore(local),
                upload_bytes_per_second=10**12,
                download_bytes_per_second=10**12,
            )
        )
    return GuardedStore(_azure_store(request))


@pytest.fixture
def any_repo(any_store) -> Repository:
    """A repository on each backend of ``any_store``."""
    return Repository.init(any_store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


@pytest.fixture
def repo(memory_store) -> Repository:
    return Repository.init(memory_store, PASSPHRASE, kdf=FAST_KDF, chunker=SMALL_CHUNKS)


def write_random(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.fixture
def source(tmp_path) -> Path:
    """A small mixed tree: random and compressible files, an empty file and folder."""
    src = tmp_path / "src"
    write_random(src / "random.bin", 300_000, 1)
    (src / "text.txt").write_bytes(b"hello haven\n" * 20_000)
    (src / "empty").write_bytes(b"")
    (src / "sub" / "deeper").mkdir(parents=True)
    write_random(src / "sub" / "a.dat", 5_000, 2)
    (src / "emptydir").mkdir()
    os.symlink("random.bin", src / "link")
    return src


def tree_snapshot(root: Path) -> dict:
    """path -> (type, mode, mtime_ns, content or link target), for comparing trees."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, os.fsencode(root))
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("file", st.st_mode & 0o7777, st.st_mtime_ns, f.read())
    return out


def restored(target: Path, source: Path) -> Path:
    return target / str(source).lstrip("/")
