"""``run_restore``: put a recovery point (or part of it) back into a target folder.

Safety: every manifest path is checked (absolute, no empty, ``.``, ``..`` or NUL component)
and restored *under* the target (``/home/a/x`` -> ``<target>/home/a/x``). Folders are walked
with directory file descriptors opened ``O_NOFOLLOW``, so a symbolic link planted inside the
target (or restored earlier) is never followed: nothing is ever written outside the target.

Conflicts with existing files (``on_conflict``):

* ``"overwrite"`` — the new file is written beside it and renamed over it (atomic; an existing
  symlink is replaced, not followed)
* ``"skip"`` — the existing file is kept
* ``"copy"`` — the restored file gets a free name ``name (1).ext``, ``name (2).ext`` … (the
  extension is what follows the last dot; ``.bashrc (1)`` for dot-files)

An existing folder is merged in every mode. Damaged data fails only the files that need it
(named in ``failed``); a cancel keeps every file finished so far, complete.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import os
import pwd
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from agents.runtime.blobstore.base import StorageError
from agents.runtime.engine.errors import EngineError, IntegrityError, InvalidArgument
from agents.runtime.engine.format import DIR, FILE, HARDLINK, HOLE_ID, SYMLINK, Entry
from agents.runtime.engine.progress import ProgressSink, Reporter, display_path
from agents.runtime.engine.repository import ChunkReader, RecoveryPoint, Repository

CONFLICT_POLICIES = ("overwrite", "skip", "copy")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(EngineError):
    """A manifest path that would escape the target (``..``, NUL, a symlinked parent …)."""


@dataclass
class RestoreResult:
    """``status``: completed, completed_with_warnings or cancelled."""

    status: str
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: int = 0  # kept existing files (on_conflict="skip")
    failed: list[dict] = field(default_factory=list)  # {"path", "reason"}: not restored
    warnings: list[dict] = field(default_factory=list)
    duration_s: float = 0.0
    message: str = ""


def safe_components(path: bytes) -> list[bytes]:
    if not path.startswith(b"/"):
        raise UnsafePath(f"refusing {display_path(path)!r}: manifest paths must be absolute")
    if path == b"/":
        return []
    parts = path[1:].split(b"/")
    for c in parts:
        if c in (b"", b".", b"..") or b"\0" in c:
            raise UnsafePath(f"refusing {display_path(path)!r}: unsafe path component {c!r}")
    return parts


def _selected(path: bytes, selections: list[bytes] | None) -> bool:
    if selections is None:
        return True
    return any(path == s or path.startswith(s.rstrip(b"/") + b"/") or s == b"/" for s in selections)


def copy_name(name: bytes, n: int) -> bytes:
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem:
        return name + b" (%d)" % n
    return stem + b" (%d)." % n + ext


class _Tree:
    """Directory fds under the target, walked without following any symlink."""

    def __init__(self, target: Path):
        target.mkdir(parents=True, exist_ok=True)
        # The target itself may be a symlink (the caller chose it); nothing below it is followed.
        self.root = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.stack: list[tuple[bytes, int]] = []

    def dir_fd(self, comps: list[bytes]) -> int:
        stack = self.stack
        i = 0
        while i < len(stack) and i < len(comps) and stack[i][0] == comps[i]:
            i += 1
        while len(stack) > i:
            os.close(stack.pop()[1])
        for c in comps[i:]:
            parent = stack[-1][1] if stack else self.root
            stack.append((c, self._open_dir(parent, c, comps)))
        return stack[-1][1] if stack else self.root

    def _open_dir(self, parent: int, name: bytes, comps: list[bytes]) -> int:
        for _ in range(2):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(
                        f"refusing to restore under {display_path(b'/'.join(comps))!r}: "
                        f"{display_path(name)!r} in the target is a symbolic link or not a folder"
                    ) from None
                raise
        raise UnsafePath(f"cannot create folder {display_path(name)!r}")

    def fresh_dir_fd(self, comps: list[bytes]) -> int:
        """An fd for ``comps`` opened on its own (caller closes), no symlink followed."""
        fd = os.dup(self.root)
        for c in comps:
            try:
                nfd = os.open(c, _DIR_FLAGS, dir_fd=fd)
            finally:
                os.close(fd)
            fd = nfd
        return fd

    def close(self) -> None:
        while self.stack:
            os.close(self.stack.pop()[1])
        os.close(self.root)


def _exists(name: bytes, dfd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Restore:
    """Walks the manifest on the calling thread (folders, symlinks, safety checks) and hands
    files to a few writer threads: decryption, decompression and the file system calls release
    the GIL, so they overlap (each writer has its own small pack-window cache)."""

    def __init__(self, repo: Repository, rp: RecoveryPoint, **kw):
        self.repo, self.rp = repo, rp
        self.__dict__.update(kw)
        self.result = RestoreResult(status="completed")
        self.lock = threading.Lock()
        self.local = threading.local()
        # ino -> (path in the manifest, folder, restored name, future): hard-link heads
        self.heads: dict[int, tuple[bytes, list[bytes], bytes, Future | None]] = {}
        self.dirs: list[tuple[list[bytes], Entry]] = []
        self.skip_under: list[bytes] = []
        self.errors: list[BaseException] = []
        self.cancelled = False

    def warn(self, path: bytes, reason: str, *, failed: bool = False) -> None:
        with self.lock:
            w = self.reporter.warn(path, reason)
            (self.result.failed if failed else self.result.warnings).append(w)

    def _reader(self) -> ChunkReader:
        reader = getattr(self.local, "reader", None)
        if reader is None:
            reader = self.local.reader = ChunkReader(self.repo)
        return reader

    def run(self) -> RestoreResult:
        rep = self.reporter
        rep.set_phase("restoring")
        if self.paths is None:
            rep.files_total = self.rp.stats.get("files")
            rep.bytes_total = self.rp.stats.get("logical_bytes")
        else:
            files = size = 0
            for e in self.repo.iter_entries(self.rp):
                if e.kind == FILE and _selected(e.path, self.paths):
                    files, size = files + 1, size + e.size
            rep.files_total, rep.bytes_total = files, size
        self.tree = _Tree(self.target)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="haven-restore")
        self.slots = threading.BoundedSemaphore(2 * self.threads)  # bounded memory
        try:
            for e in self.repo.iter_entries(self.rp, ChunkReader(self.repo)):
                if not _selected(e.path, self.paths):
                    continue
                if self.cancel.is_set() or self.cancelled:
                    self.cancelled = True
                    break
                if self.errors:
                    break
                if self.skip_under and any(e.path.startswith(s) for s in self.skip_under):
                    continue
                rep.current = e.path
                try:
                    comps = safe_components(e.path)
                    if not comps:
                        continue  # the root itself: the target is its stand-in
                    self._entry(e, comps)
                except UnsafePath as exc:
                    self.warn(e.path, str(exc), failed=True)
                except OSError as exc:
                    self.warn(e.path, f"cannot restore: {exc.strerror or exc}", failed=True)
                with self.lock:
                    rep.emit()
        finally:
            self.pool.shutdown(wait=True)
            try:
                if not self.errors:
                    self._apply_dir_metadata()
            finally:
                self.tree.close()
        if self.errors:
            raise self.errors[0]
        res = self.result
        if self.cancelled or self.cancel.is_set():
            res.status = "cancelled"
            res.message = (
                f"restore cancelled after {res.files} files; every file restored so far is "
                "complete and kept, the rest was not restored"
            )
        else:
            res.status = "completed_with_warnings" if res.failed or res.warnings else "completed"
            res.message = f"restored {res.files} files ({res.bytes} bytes)" + (
                f"; {len(res.failed)} could not be restored" if res.failed else ""
            )
        return res

    def _entry(self, e: Entry, comps: list[bytes]) -> None:
        dfd = self.tree.dir_fd(comps[:-1])
        name = comps[-1]
        if e.kind == DIR:
            existing = _exists(name, dfd)
            if existing is not None and not _isdir(existing):
                if self.on_conflict != "overwrite":
                    self.warn(e.path, "a file with this name exists in the target; folder skipped")
                    self.skip_under.append(e.path.rstrip(b"/") + b"/")
                    return
                os.unlink(name, dir_fd=dfd)
            self.tree.dir_fd(comps)
            self.dirs.append((comps, e))
            self.result.dirs += 1
            return
        if e.kind == SYMLINK:
            placed = self._place(e, name, dfd, lambda n: os.symlink(e.target, n, dir_fd=dfd))
            if placed is not None:
                _, created, final = placed
                self._meta_link(created, dfd, e)
                if created != final:
                    os.rename(created, final, src_dir_fd=dfd, dst_dir_fd=dfd)
                self.result.symlinks += 1
            return
        # Files and hard links go to the writer threads, with their own fd of the folder.
        head = None
        if e.nlink > 1:
            head = self.heads.get(e.ino)
            if head is not None and head[0] != e.target and head[0] != e.path:
                head = None
        self.slots.acquire()
        own_dfd = os.dup(dfd)
        try:
            fut = self.pool.submit(self._file_task, e, comps, own_dfd, head)
        except BaseException:
            os.close(own_dfd)
            self.slots.release()
            raise
        fut.add_done_callback(self._done)
        if e.nlink > 1 and head is None:
            key = e.target if e.kind == HARDLINK else e.path
            self.heads[e.ino] = (key, comps[:-1], name, fut)

    def _done(self, fut: Future) -> None:
        exc = fut.exception()
        if exc is not None and not isinstance(exc, _Cancelled):
            self.errors.append(exc)

    def _place(self, e: Entry, name: bytes, dfd: int, make):
        """Create ``name`` with ``make`` under the conflict policy: (made, created, final)
        or None when skipped. ``created != final`` means rename over ``final`` when done."""
        try:
            return make(name), name, name
        except FileExistsError:
            pass
        existing = _exists(name, dfd)
        if existing is not None and _isdir(existing):
            self.warn(e.path, "a folder with this name exists in the target; not restored",
                      failed=True)  # fmt: skip
            return None
        if self.on_conflict == "skip":
            with self.lock:
                self.result.skipped += 1
            return None
        if self.on_conflict == "copy":
            n = 1
            while True:
                candidate = copy_name(name, n)
                try:
                    return make(candidate), candidate, candidate
                except FileExistsError:
                    n += 1
        # overwrite: build beside it, then rename over it (atomic; a symlink is replaced,
        # never followed)
        tmp = b".%s.haven-%s" % (name[:200], os.urandom(4).hex().encode())
        return make(tmp), tmp, name

    def _file_task(self, e: Entry, comps: list[bytes], dfd: int, head) -> None:
        try:
            if self.cancel.is_set():
                raise _Cancelled()
            name = comps[-1]
            if head is not None and self._link(e, name, dfd, head):
                with self.lock:
                    self.result.files += 1
                return
            placed = self._place(e, name, dfd, lambda n: os.open(n, _NEW_FLAGS, 0o600, dir_fd=dfd))
            if placed is None:
                return
            fd, created, final = placed
            if self._write(e, fd, created, dfd) and created != final:
                os.rename(created, final, src_dir_fd=dfd, dst_dir_fd=dfd)
        except _Cancelled:
            self.cancelled = True
        except OSError as exc:
            self.warn(e.path, f"cannot restore: {exc.strerror or exc}", failed=True)
        finally:
            os.close(dfd)
            self.slots.release()

    def _link(self, e: Entry, name: bytes, dfd: int, head) -> bool:
        _key, head_dir, head_name, fut = head
        if fut is not None:
            wait([fut])  # submitted earlier, so already running or done: no deadlock
            if fut.exception() is not None:
                return False
        try:
            src = self.tree.fresh_dir_fd(head_dir)
        except OSError:
            return False
        try:
            make = lambda n: os.link(  # noqa: E731
                head_name, n, src_dir_fd=src, dst_dir_fd=dfd, follow_symlinks=False
            )
            placed = self._place(e, name, dfd, make)
            if placed is not None and placed[1] != placed[2]:
                os.rename(placed[1], placed[2], src_dir_fd=dfd, dst_dir_fd=dfd)
            return placed is not None
        except OSError:
            return False  # e.g. the head failed or another file system: write the content
        finally:
            os.close(src)

    def _write(self, e: Entry, fd: int, name: bytes, dfd: int) -> bool:
        reader = self._reader()
        rep = self.reporter
        try:
            pos = 0
            for cid, n in e.content:
                if self.cancel.is_set():
                    raise _Cancelled()
                if cid == HOLE_ID:
                    pos += n
                    os.lseek(fd, pos, os.SEEK_SET)
                    continue
                view = memoryview(reader.read(cid))
                while view:
                    view = view[os.write(fd, view) :]
                pos += n
                with self.lock:
                    rep.bytes_done += n
            if e.content and e.content[-1][0] == HOLE_ID:
                os.ftruncate(fd, pos)
            self._meta_fd(fd, e)
        except (IntegrityError, StorageError) as exc:
            os.close(fd)
            os.unlink(name, dir_fd=dfd)
            self.warn(e.path, f"not restored: {exc}", failed=True)
            return False
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=dfd)
            raise
        os.close(fd)
        with self.lock:
            self.result.files += 1
            self.result.bytes += pos
            rep.files_done += 1
        return True

    # -- metadata ----------------------------------------------------------------------------
    def _owner(self, e: Entry) -> tuple[int, int]:
        """By name when this machine knows the name, else the stored number."""
        return _uid(e.user, e.uid), _gid(e.group, e.gid)

    def _meta_fd(self, fd: int, e: Entry) -> None:
        if self.restore_owner:
            try:
                os.fchown(fd, *self._owner(e))
            except PermissionError:
                self.warn(e.path, "owner not restored: permission denied")
        os.fchmod(fd, e.mode)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))

    def _meta_link(self, name: bytes, dfd: int, e: Entry) -> None:
        if self.restore_owner:
            try:
                os.chown(name, *self._owner(e), dir_fd=dfd, follow_symlinks=False)
            except PermissionError:
                self.warn(e.path, "owner not restored: permission denied")
        os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=dfd, follow_symlinks=False)

    def _apply_dir_metadata(self) -> None:
        """Folders last (children change their mtime), deepest first."""
        for comps, e in reversed(self.dirs):
            try:
                fd = self.tree.fresh_dir_fd(comps)
            except OSError:
                continue
            try:
                self._meta_fd(fd, e)
            except OSError as exc:
                self.warn(e.path, f"folder metadata not restored: {exc.strerror}")
            finally:
                os.close(fd)


class _Cancelled(Exception):
    pass


@functools.lru_cache(maxsize=4096)
def _uid(name: bytes, uid: int) -> int:
    if name:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(os.fsdecode(name)).pw_uid
    return uid


@functools.lru_cache(maxsize=4096)
def _gid(name: bytes, gid: int) -> int:
    if name:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(os.fsdecode(name)).gr_gid
    return gid


def _isdir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)


def run_restore(
    repo: Repository,
    *,
    recovery_point: str | RecoveryPoint,
    target: str | os.PathLike,
    paths: list[str | bytes] | None = None,
    on_conflict: str = "overwrite",
    restore_owner: bool | None = None,
    sink: ProgressSink | None = None,
    cancel: threading.Event | None = None,
    threads: int = 3,
) -> RestoreResult:
    """Restore ``recovery_point`` (id, prefix, ``"latest"``) or only ``paths`` (absolute,
    as backed up, with everything under them) beneath ``target``.

    ``restore_owner``: None = when running as root; True also tries as a normal user (a
    warning per file where it is not permitted).
    """
    if on_conflict not in CONFLICT_POLICIES:
        raise InvalidArgument(f"on_conflict must be one of {', '.join(CONFLICT_POLICIES)}")
    started = time.monotonic()
    repo.load_index()
    rp = repo.recovery_point(recovery_point)
    selections = None
    if paths is not None:
        selections = []
        for p in paths:
            raw = os.fsencode(p)
            if not raw.startswith(b"/"):
                raise InvalidArgument(f"restore path {display_path(raw)!r} must be absolute")
            selections.append(os.path.normpath(raw).replace(b"//", b"/"))
    job = _Restore(
        repo,
        rp,
        paths=selections,
        target=Path(target),
        on_conflict=on_conflict,
        restore_owner=(os.geteuid() == 0) if restore_owner is None else restore_owner,
        reporter=Reporter(sink, "restore"),
        cancel=cancel or threading.Event(),
        threads=max(1, threads),
    )
    res = job.run()
    res.duration_s = round(time.monotonic() - started, 3)
    job.reporter.finish(res.status, message=res.message, failed=len(res.failed))
    return res
