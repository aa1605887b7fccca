"""A container as a directory on a local (or mounted) file system.

Blob ``a/b/c`` is the file ``<root>/a/b/c``. Writes go to a temporary file under
``<root>/.haven/tmp`` that is fsynced and then hard-linked to the target name: ``link``
fails when the name exists, so a blob is created whole or not at all and never
overwritten, even by two writers racing for one name. (The file system must support hard
links; every local Linux file system does.) A crash never leaves half a blob under a real
name. ``.haven`` is reserved for this bookkeeping (the portal also keeps its grant
generation there) and never appears in ``list``.

Blobs are created ``0600`` and folders ``0700`` (whatever the umask): only the account that
runs the portal (or the agent) reads a container.

Limitation of a file system, not shared by Azure: a name cannot be both a blob and a
"folder", so ``a`` and ``a/b`` cannot exist at the same time.
"""

from __future__ import annotations

import builtins
import errno
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from agents.runtime.blobstore._common import check_name, check_range
from agents.runtime.blobstore.base import (
    BlobExists,
    BlobForbidden,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    ContainerNotFound,
    InvalidBlobName,
    StorageError,
)

RESERVED = ".haven"
FILE_MODE = 0o600
FOLDER_MODE = 0o700
_CHUNK = 1024 * 1024


class IncompleteUpload(StorageError):
    """The uploaded body was shorter (or longer) than announced; nothing was stored."""


class LocalDirectoryStore(BlobStore):
    fork_safe_reads = True

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise ContainerNotFound(f"the storage directory {self.root} does not exist")
        self._tmp = self.root / RESERVED / "tmp"
        self._tmp_ready = threading.Event()

    # --- names ------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """The file that holds blob ``name`` (after checking the name is safe)."""
        check_name(name)
        if name.split("/", 1)[0] == RESERVED:
            raise InvalidBlobName(f"blob names starting with {RESERVED!r} are reserved")
        return self.root / name

    def _fail(self, action: str, name: str, exc: OSError) -> StorageError:
        if not self.root.is_dir():
            return ContainerNotFound(f"the storage directory {self.root} does not exist")
        if isinstance(exc, PermissionError):
            return BlobForbidden(f"no permission to {action} {name!r} in {self.root}")
        if exc.errno == errno.ENOSPC:
            return StorageError(f"no space left in {self.root} to {action} {name!r}")
        if (
            isinstance(exc, NotADirectoryError | IsADirectoryError | FileExistsError)
            or exc.errno == errno.ENOTEMPTY
        ):
            return InvalidBlobName(
                f"cannot {action} {name!r}: in a local directory a name cannot be both a blob "
                "and a folder of other blobs"
            )
        return StorageError(f"could not {action} {name!r} in {self.root}: {exc.strerror or exc}")

    # --- writing ----------------------------------------------------------------------
    def put(self, name: str, data: bytes | memoryview) -> None:
        self._write(name, lambda out: out.write(data))

    def put_stream(self, name: str, chunks: Iterable[bytes], *, length: int | None = None) -> int:
        """Create a blob from an iterable of byte chunks without holding it in memory.

        With ``length``, a body of any other size raises ``IncompleteUpload`` and stores
        nothing (a client that disconnects mid-upload must not leave a truncated blob).
        """

        def write(out: BinaryIO) -> None:
            written = 0
            for chunk in chunks:
                out.write(chunk)
                written += len(chunk)
            if length is not None and written != length:
                raise IncompleteUpload(
                    f"upload of {name!r} ended after {written} of {length} bytes; nothing was stored"
                )

        return self._write(name, write)

    def _write(self, name: str, write: Callable[[BinaryIO], object]) -> int:
        target = self.path(name)
        self._ensure_tmp()
        tmp = self._tmp / f"{uuid.uuid4().hex}.tmp"
        try:
            # 0600 from the start (not chmod after): the bytes are never readable by others.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            # A concurrent delete may prune the parent folder between makedirs and link.
            for attempt in range(3):
                self._make_parents(target)
                try:
                    os.link(tmp, target)
                    break
                except FileNotFoundError:
                    if attempt == 2 or not tmp.exists():
                        raise
                except FileExistsError:
                    if target.is_file() and not target.is_symlink():
                        if _same_file(tmp, target):
                            return size  # a retried create that had landed
                        raise BlobExists(name) from None
                    raise
            _fsync_dir(target.parent)
            return size
        except OSError as exc:
            raise self._fail("store", name, exc) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _make_parents(self, target: Path) -> None:
        """Create the folders between the root and ``target``, never the root itself: a
        container deleted under a running upload must stay deleted."""
        current = self.root
        for part in target.relative_to(self.root).parts[:-1]:
            current = current / part
            current.mkdir(mode=FOLDER_MODE, exist_ok=True)

    def _ensure_tmp(self) -> None:
        if self._tmp_ready.is_set():
            return
        try:
            self._make_parents(self._tmp / "x")
        except FileNotFoundError:
            raise ContainerNotFound(f"the storage directory {self.root} does not exist") from None
        except OSError as exc:
            raise self._fail("prepare", RESERVED, exc) from exc
        self._tmp_ready.set()

    # --- reading ----------------------------------------------------------------------
    def open(self, name: str) -> BinaryIO:
        """The blob as an open binary file (the portal streams responses from it)."""
        path = self.path(name)
        try:
            return open(path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(name) from None
        except OSError as exc:
            raise self._fail("read", name, exc) from exc

    def stat(self, name: str) -> BlobInfo:
        path = self.path(name)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(name) from None
        except OSError as exc:
            raise self._fail("read", name, exc) from exc
        if not path.is_file():
            raise BlobNotFound(name)
        return BlobInfo(
            name=name, size=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC)
        )

    def get(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        with self.open(name) as f:
            f.seek(offset)
            return f.read(length)

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        folder, _, _ = prefix.rpartition("/")
        if folder:
            try:
                check_name(folder)
            except InvalidBlobName:
                return iter(())  # no blob can have such a name
        start = self.root / folder if folder else self.root
        if not self.root.is_dir():
            raise ContainerNotFound(f"the storage directory {self.root} does not exist")
        found: list[BlobInfo] = []
        self._walk(start, f"{folder}/" if folder else "", prefix, found)
        found.sort(key=lambda info: info.name)
        return iter(found)

    # builtins.list: in this class ``list`` is the method.
    def _walk(
        self, folder: Path, relative: str, prefix: str, found: builtins.list[BlobInfo]
    ) -> None:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self._fail("list", relative or "/", exc) from exc
        for entry in entries:
            name = relative + entry.name
            if not relative and entry.name == RESERVED:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    # Descend only where a name under this folder could match the prefix.
                    if (name + "/").startswith(prefix) or prefix.startswith(name + "/"):
                        self._walk(Path(entry.path), name + "/", prefix, found)
                elif entry.is_file(follow_symlinks=False) and name.startswith(prefix):
                    st = entry.stat(follow_symlinks=False)
                    found.append(
                        BlobInfo(
                            name=name,
                            size=st.st_size,
                            modified=datetime.fromtimestamp(st.st_mtime, UTC),
                        )
                    )
            except FileNotFoundError:
                continue  # deleted while we listed

    # --- deleting ---------------------------------------------------------------------
    def delete(self, name: str) -> None:
        path = self.path(name)
        try:
            if path.is_dir():
                raise BlobNotFound(name)
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(name) from None
        except OSError as exc:
            raise self._fail("delete", name, exc) from exc
        # Prune folders left empty so the tree does not fill with husks; a folder that a
        # concurrent put is filling is not empty (or is re-created by its retry).
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def usage(self) -> int:
        """Bytes in all blobs (bookkeeping under ``.haven`` excluded)."""
        return sum(info.size for info in self.list())

    def __repr__(self) -> str:
        return f"LocalDirectoryStore({str(self.root)!r})"


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk = fa.read(_CHUNK)
            if chunk != fb.read(_CHUNK):
                return False
            if not chunk:
                return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (and Windows) cannot fsync a directory
    finally:
        os.close(fd)
