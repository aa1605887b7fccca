"""Small builders shared by the engine tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agents.runtime.engine import chunkers, list_dir, run_backup, run_restore


def backup(repo, src, **kw):
    kw.setdefault("pack_size", 256 * 1024)
    kw.setdefault("hostname", "test-host")
    return run_backup(repo, sources=[src], **kw)


def pack_of_file(repo, path) -> str:
    """Hex id of the pack holding the first chunk of ``path`` in the latest recovery point
    (a data pack: metadata is packed apart, so ``packs[0]`` may hold no file data)."""
    path = Path(path)
    listing = list_dir(repo, recovery_point="latest", path=str(path.parent))
    (entry,) = [e for e in listing if e.name == os.fsencode(path.name)]
    return repo.index.pack_ids[repo.index.get(entry.content[0][0])[0]].hex()


def slow_link(monkeypatch, seconds: float = 0.05) -> None:
    """Every pack read through local storage takes ``seconds`` (patched before the restore
    forks its writers, so it reaches them)."""
    from agents.runtime.blobstore.local import LocalDirectoryStore
    from agents.runtime.engine.localstore import DirStore
    from tests.runtime.engine.stores import MemoryStore

    for cls in (LocalDirectoryStore, DirStore, MemoryStore):
        original = cls.get_range

        def get_range(self, name, offset, length, _original=original):
            if name.startswith("data/"):
                time.sleep(seconds)
            return _original(self, name, offset, length)

        monkeypatch.setattr(cls, "get_range", get_range)


def after_files_restored(monkeypatch, count: int, action) -> None:
    """Run ``action()`` once, in the calling process, when the restore's progress first shows
    ``count`` files done (the person presses Ctrl-C or Cancel then)."""
    from agents.runtime.engine.progress import Reporter

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
