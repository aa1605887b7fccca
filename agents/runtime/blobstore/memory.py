"""An in-memory store: the reference backend for tests and the conformance suite."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from agents.runtime.blobstore._common import check_name, check_range
from agents.runtime.blobstore.base import BlobExists, BlobInfo, BlobNotFound, BlobStore


class MemoryStore(BlobStore):
    """Blobs in a dict behind a lock; ``put`` copies, so callers may reuse their buffers,
    and refuses to overwrite, like every backend."""

    fork_safe_reads = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, tuple[bytes, datetime]] = {}

    def put(self, name: str, data: bytes | memoryview) -> None:
        check_name(name)
        blob = bytes(data)
        with self._lock:
            if name in self._blobs:
                if self._blobs[name][0] == blob:
                    return  # a retried create
                raise BlobExists(name)
            self._blobs[name] = (blob, datetime.now(UTC))

    def get(self, name: str) -> bytes:
        check_name(name)
        with self._lock:
            try:
                return self._blobs[name][0]
            except KeyError:
                raise BlobNotFound(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        return self.get(name)[offset : offset + length]

    def exists(self, name: str) -> bool:
        check_name(name)
        with self._lock:
            return name in self._blobs

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        with self._lock:
            infos = [
                BlobInfo(name=name, size=len(blob), modified=modified)
                for name, (blob, modified) in self._blobs.items()
                if name.startswith(prefix)
            ]
        infos.sort(key=lambda info: info.name)
        return iter(infos)

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            try:
                del self._blobs[name]
            except KeyError:
                raise BlobNotFound(name) from None

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._blobs)} blobs)"
