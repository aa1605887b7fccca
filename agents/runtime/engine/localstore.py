"""A minimal local-directory ``BlobStore`` for the engine's own CLI and benchmark.

The product's local backend is ``agents.runtime.blobstore`` (another package); this one exists
so ``python -m agents.runtime.engine`` works on its own. Writes are atomic (temp file, fsync,
rename).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from agents.runtime.blobstore.base import BlobInfo, BlobNotFound, BlobStore, StorageError


class DirStore(BlobStore):
    fork_safe_reads = True

    def __init__(self, root: str | os.PathLike, *, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise StorageError(f"invalid blob name {name!r}")
        return self.root / name

    def put(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(name) from None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            for fname in files:
                if fname.startswith("."):
                    continue
                full = os.path.join(dirpath, fname)
                name = os.path.relpath(full, self.root).replace(os.sep, "/")
                if name.startswith(prefix):
                    st = os.stat(full)
                    out.append(BlobInfo(name, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        yield from sorted(out, key=lambda b: b.name)

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            raise BlobNotFound(name) from None
