"""Small builders shared by the engine tests, and the store guard they run the engine on."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from agents.runtime.blobstore.base import BlobForbidden, BlobInfo, BlobStore
from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.blobstore.memory import MemoryStore
from agents.runtime.engine import RecoveryPoint, chunkers, list_dir, run_backup, run_restore
from agents.runtime.engine.format import HOLE_ID, Entry, encode_chunk
from agents.runtime.engine.layout import DATA_PREFIX, pack_blob
from agents.runtime.engine.metadata import MetadataWriter
from agents.runtime.engine.packer import Packer
from agents.runtime.engine.progress import Reporter
from agents.runtime.engine.repository import now


class GuardedStore(BlobStore):
    """A real backend (one the conformance suite checks) as the engine tests hand it to the
    engine: ``delete`` is refused, because the engine must never delete (the agent's grant has
    no delete right). A test that damages or removes blobs behind the engine's back does it on
    ``backend``."""

    def __init__(self, backend: BlobStore) -> None:
        self.backend = backend

    @property
    def fork_safe_reads(self) -> bool:
        return self.backend.fork_safe_reads

    def put(self, name: str, data: bytes | memoryview) -> None:
        self.backend.put(name, data)

    def get(self, name: str) -> bytes:
        return self.backend.get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.backend.get_range(name, offset, length)

    def exists(self, name: str) -> bool:
        return self.backend.exists(name)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        return self.backend.list(prefix)

    def delete(self, name: str) -> None:
        raise BlobForbidden("the engine must never delete")

    def close(self) -> None:
        self.backend.close()


def contents(store: BlobStore, prefix: str = "") -> dict[str, bytes]:
    """Every blob under ``prefix``: name -> bytes."""
    return {b.name: store.get(b.name) for b in store.list(prefix)}


def flip(store: BlobStore, name: str, offset: int) -> None:
    """Damage blob ``name``: one bit flipped at ``offset``."""
    data = bytearray(store.get(name))
    data[offset] ^= 0x01
    # Blobs are never overwritten: damage is a delete and a create, behind the engine's back.
    backend = store.backend if isinstance(store, GuardedStore) else store
    backend.delete(name)
    backend.put(name, bytes(data))


def remove(store: GuardedStore, name: str) -> None:
    """Delete a blob behind the engine's back (the portal's garbage collection does)."""
    store.backend.delete(name)


def backup(repo, src, **kw):
    kw.setdefault("pack_size", 256 * 1024)
    kw.setdefault("hostname", "test-host")
    return run_backup(repo, sources=[src], **kw)


def craft_recovery_point(repo, entries: list[Entry], *, chunks: list[bytes] = ()) -> str:
    """Store a recovery point of hand-made (hostile) ``entries``, as an attacker holding the
    key, or a bug, could write it; ``chunks``: contents to store first for entries to point at
    (``(repo.chunk_id(data), len(data))``). Returns its id."""
    repo.load_index()
    packer = Packer(repo, 1 << 20, 1)
    for data in chunks:
        cid = repo.chunk_id(data)
        packer.add(cid, encode_chunk(data, cid, repo.sealer, None), len(data))
    meta = MetadataWriter(repo, packer)
    for e in entries:
        meta.add(e)
    ids = meta.finish()
    packer.seal_pack()
    packer.close()
    rp = RecoveryPoint(
        id=os.urandom(16).hex(), time=now(), hostname="evil", sources=["/"], tags=[],
        status="completed", stats={}, packs=[], meta=[i.hex() for i in ids],
    )  # fmt: skip
    repo.write_recovery_point(rp)
    return rp.id


def pack_of_file(repo, path) -> str:
    """Hex id of the pack holding the first chunk of ``path`` in the latest recovery point
    (a data pack: metadata is packed apart, so ``packs[0]`` may hold no file data)."""
    path = Path(path)
    listing = list_dir(repo, recovery_point="latest", path=str(path.parent))
    (entry,) = [e for e in listing if e.name == os.fsencode(path.name)]
    return repo.index.pack_ids[repo.index.get(entry.content[0][0])[0]].hex()


def file_data_packs(repo, folder) -> list[str]:
    """Blob names of the packs holding the data of the files in ``folder`` (latest recovery
    point), in the order the files use them; metadata packs are not among them."""
    listing = list_dir(repo, recovery_point="latest", path=str(folder))
    index = repo.index
    return list(
        dict.fromkeys(
            pack_blob(index.pack_ids[index.get(cid)[0]])
            for e in listing
            for cid, _ in e.content
            if cid != HOLE_ID
        )
    )


def slow_link(monkeypatch, seconds: float = 0.05) -> None:
    """Every pack read through local storage takes ``seconds`` (patched before the restore
    forks its writers, so it reaches them)."""
    for cls in (LocalDirectoryStore, MemoryStore):
        original = cls.get_range

        def get_range(self, name, offset, length, _original=original):
            if name.startswith(DATA_PREFIX):
                time.sleep(seconds)
            return _original(self, name, offset, length)

        monkeypatch.setattr(cls, "get_range", get_range)


def after_files_restored(monkeypatch, count: int, action) -> None:
    """Run ``action()`` once, in the calling process, when the restore's progress first shows
    ``count`` files done (the person presses Ctrl-C or Cancel then)."""
    original = Reporter.emit

    def emit(self, *, force=False):
        if self.files_done >= count and not getattr(self, "acted", False):
            self.acted = True
            action()
        return original(self, force=force)

    monkeypatch.setattr(Reporter, "emit", emit)


def restore(repo, target, **kw):
    kw.setdefault("recovery_point", "latest")
    return run_restore(repo, target=target, **kw)


def log_opens(monkeypatch, log: Path) -> None:
    """Record every file a worker opens (workers are forked, so the patch reaches them)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    original = chunkers.FileProcessor._open

    def _open(self, path):
        with open(log, "ab") as f:
            f.write(path + b"\n")
        return original(self, path)

    monkeypatch.setattr(chunkers.FileProcessor, "_open", _open)


def opened(log: Path) -> list[bytes]:
    return log.read_bytes().splitlines() if log.exists() else []


def fail_open(monkeypatch, name: bytes, exc: OSError) -> None:
    original = chunkers.FileProcessor._open

    def _open(self, path):
        if os.path.basename(path) == name:
            raise exc
        return original(self, path)

    monkeypatch.setattr(chunkers.FileProcessor, "_open", _open)
