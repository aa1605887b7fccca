"""Tiny blob stores for the engine tests (the real backends live in agents/runtime/blobstore)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from agents.runtime.blobstore.base import BlobForbidden, BlobInfo, BlobNotFound, BlobStore


class MemoryStore(BlobStore):
    fork_safe_reads = True

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.puts: list[str] = []

    def put(self, name: str, data: bytes | memoryview) -> None:
        with self.lock:
            self.blobs[name] = bytes(data)
            self.puts.append(name)

    def get(self, name: str) -> bytes:
        try:
            return self.blobs[name]
        except KeyError:
            raise BlobNotFound(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.get(name)[offset : offset + length]

    def exists(self, name: str) -> bool:
        return name in self.blobs

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with self.lock:
            items = sorted((n, len(b)) for n, b in self.blobs.items() if n.startswith(prefix))
        for name, size in items:
            yield BlobInfo(name, size, datetime.now(UTC))

    def delete(self, name: str) -> None:
        raise BlobForbidden("the engine must never delete")


class DirStore(BlobStore):
    """Local directory; atomic puts (temp + rename), no fsync (tests)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, name: str, data: bytes | memoryview) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            with open(self.root / name, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise BlobNotFound(name) from None

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        out = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                name = path.relative_to(self.root).as_posix()
                if name.startswith(prefix):
                    out.append(BlobInfo(name, path.stat().st_size, datetime.now(UTC)))
        yield from sorted(out, key=lambda b: b.name)

    def delete(self, name: str) -> None:
        raise BlobForbidden("the engine must never delete")
