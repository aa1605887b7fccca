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
import multiprocessing
import os
import pwd
import queue
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agents.runtime.blobstore.base import StorageError
from agents.runtime.engine.errors import EngineError, IntegrityError, InvalidArgument
from agents.runtime.engine.forked import die_with_parent
from agents.runtime.engine.format import (
    DIR,
    FILE,
    HARDLINK,
    HOLE_ID,
    SYMLINK,
    Entry,
    decode_entries,
    encode_entry,
)
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


def _past_all(path: bytes, selections: list[bytes]) -> bool:
    """In tree order, has ``path`` gone beyond everything under every selection? (Entries
    under a selection come together, right after it, so the rest need not be read.)"""
    key = path.split(b"/")
    for s in selections:
        skey = s.rstrip(b"/").split(b"/") if s != b"/" else [b""]
        if s == b"/" or key <= skey or key[: len(skey)] == skey:
            return False
    return True


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


class _Cancelled(Exception):
    pass


BATCH_FILES = 128
BATCH_BYTES = 16 << 20
PROGRESS_BYTES = 4 << 20  # a writer reports progress at least every 4 MiB written ...
PROGRESS_SECONDS = 0.1  # ... and, between files, every 0.1 s


class _FileWriter:
    """Writes files under the target: the part of a restore that runs in the writers (and, for
    hard links deferred to the end, in the calling process). One thread per instance; it keeps
    its own folder fds (``_Tree``) and pack-window cache, and collects what it did in
    ``report()``."""

    def __init__(self, repo: Repository, target: Path, on_conflict: str, restore_owner: bool,
                 cancelled, progress):  # fmt: skip
        self.repo = repo
        self.tree = _Tree(target)
        self.reader = ChunkReader(repo)
        self.on_conflict = on_conflict
        self.restore_owner = restore_owner
        self.cancelled = cancelled
        self.progress = progress
        self.euid, self.egid = os.geteuid(), os.getegid()
        umask = os.umask(0o022)
        os.umask(umask)
        self.umask = umask
        self._sgid: dict[tuple[bytes, ...], bool] = {}
        self._xattr_failures: set[tuple[bytes, int]] = set()
        self._clear()

    def _clear(self) -> None:
        self.files = self.bytes = self.skipped = 0
        self.unreported_bytes = self.unreported_files = 0
        self.reported_at = time.monotonic()
        self.warnings: list[tuple[bytes, str]] = []
        self.failed: list[tuple[bytes, str]] = []

    def report(self) -> dict:
        """What was done since the last report (then forgotten here)."""
        out = {"files": self.files, "bytes": self.bytes, "skipped": self.skipped,
               "warnings": self.warnings, "failed": self.failed,
               "progress": (self.unreported_bytes, self.unreported_files)}  # fmt: skip
        self._clear()
        return out

    def send_progress(self, *, every: float = 0.0) -> None:
        """Progress not yet sent, if there is some and ``every`` seconds have passed."""
        if (self.unreported_bytes or self.unreported_files) and (
            time.monotonic() - self.reported_at >= every
        ):
            self.progress(self.unreported_bytes, self.unreported_files)
            self.unreported_bytes = self.unreported_files = 0
            self.reported_at = time.monotonic()

    def close(self) -> None:
        self.tree.close()

    # -- one file ------------------------------------------------------------------------
    def restore(self, e: Entry) -> None:
        """Restore one file entry; problems become ``failed`` (never an exception, but for
        ``_Cancelled``)."""
        try:
            comps = safe_components(e.path)
            dfd = self.tree.dir_fd(comps[:-1])
            mode, chmod = self._create_mode(e)
            placed = self._place(
                e, comps[-1], dfd, lambda n: os.open(n, _NEW_FLAGS, mode, dir_fd=dfd)
            )
            if placed is None:
                return
            fd, created, final = placed
            if self._write(e, fd, created, dfd, comps, chmod) and created != final:
                os.rename(created, final, src_dir_fd=dfd, dst_dir_fd=dfd)
        except UnsafePath as exc:
            self.failed.append((e.path, str(exc)))
        except OSError as exc:
            self.failed.append((e.path, f"cannot restore: {exc.strerror or exc}"))

    def link(self, e: Entry, head_dir: list[bytes], head_name: bytes) -> bool:
        """Make ``e`` a hard link to its already restored head; False to write it instead."""
        comps = safe_components(e.path)
        dfd = self.tree.dir_fd(comps[:-1])
        try:
            src = self.tree.fresh_dir_fd(head_dir)
        except OSError:
            return False
        try:
            make = lambda n: os.link(  # noqa: E731
                head_name, n, src_dir_fd=src, dst_dir_fd=dfd, follow_symlinks=False
            )
            placed = self._place(e, comps[-1], dfd, make)
            if placed is not None and placed[1] != placed[2]:
                os.rename(placed[1], placed[2], src_dir_fd=dfd, dst_dir_fd=dfd)
            if placed is not None:
                self.files += 1
            return True
        except OSError:
            return False  # e.g. the head is on another file system: write the content
        finally:
            os.close(src)

    def _create_mode(self, e: Entry) -> tuple[int, bool]:
        """The mode to create with, and whether a ``fchmod`` must follow: none when the
        plain permission bits survive the umask (special bits always need one, after the
        owner is set)."""
        if e.mode & 0o7000 == 0 and e.mode & ~self.umask & 0o777 == e.mode:
            return e.mode, False
        return 0o600, True

    def _place(self, e: Entry, name: bytes, dfd: int, make):
        """Create ``name`` with ``make`` under the conflict policy: (made, created, final)
        or None when skipped. ``created != final`` means rename over ``final`` when done."""
        try:
            return make(name), name, name
        except FileExistsError:
            pass
        existing = _exists(name, dfd)
        if existing is not None and _isdir(existing):
            self.failed.append(
                (e.path, "a folder with this name exists in the target; not restored")
            )
            return None
        if self.on_conflict == "skip":
            self.skipped += 1
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

    def _write(self, e: Entry, fd: int, name: bytes, dfd: int, comps, chmod: bool) -> bool:
        reader = self.reader
        try:
            pos = 0
            for cid, n in e.content:
                if self.cancelled():
                    raise _Cancelled()
                if cid == HOLE_ID:
                    pos += n
                    os.lseek(fd, pos, os.SEEK_SET)
                    continue
                view = memoryview(reader.read(cid))
                while view:
                    view = view[os.write(fd, view) :]
                pos += n
                self.unreported_bytes += n
                if self.unreported_bytes >= PROGRESS_BYTES:
                    self.send_progress()
            if e.content and e.content[-1][0] == HOLE_ID:
                os.ftruncate(fd, pos)
            self._meta(fd, e, comps, chmod)
        except (IntegrityError, StorageError) as exc:
            os.close(fd)
            os.unlink(name, dir_fd=dfd)
            self.failed.append((e.path, f"not restored: {exc}"))
            return False
        except BaseException:
            os.close(fd)
            os.unlink(name, dir_fd=dfd)
            raise
        os.close(fd)
        self.files += 1
        self.unreported_files += 1
        self.bytes += pos
        return True

    def _meta(self, fd: int, e: Entry, comps, chmod: bool) -> None:
        if self.restore_owner:
            uid, gid = owner_of(e)
            if uid != self.euid or gid != self.egid or self._setgid_dir(comps):
                try:
                    os.fchown(fd, uid, gid)
                    chmod = chmod or e.mode & 0o6000 != 0
                except PermissionError:
                    self.warnings.append((e.path, "owner not restored: permission denied"))
        if chmod:
            os.fchmod(fd, e.mode)
        if e.xattrs:
            for path, reason in set_xattrs(fd, e, self.restore_owner, self._xattr_failures):
                self.warnings.append((path, reason))
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))

    def _setgid_dir(self, comps) -> bool:
        """Is the file's folder set-group-id (new files then take its group, not ours)?"""
        key = tuple(comps[:-1])
        flag = self._sgid.get(key)
        if flag is None:
            flag = self._sgid[key] = bool(
                os.fstat(self.tree.dir_fd(comps[:-1])).st_mode & stat.S_ISGID
            )
        return flag


def set_xattrs(fd: int, e: Entry, with_permissions: bool, seen: set):
    """Put back ``e``'s extended attributes; yields (path, warning) for each kind of failure
    not seen before (a target file system without them would otherwise warn on every file).
    ACLs (``system.*``) and ``security.*``/``trusted.*`` (capabilities, labels) are
    permissions: set only with ``with_permissions``; ``user.*`` always."""
    for name, value in e.xattrs:
        if not with_permissions and not name.startswith(b"user."):
            continue
        try:
            os.setxattr(fd, name, value)
        except OSError as exc:
            key = (name, exc.errno or 0)
            if key not in seen:
                seen.add(key)
                more = " (the same for other files is not repeated)"
                yield (
                    e.path,
                    (f"extended attribute {os.fsdecode(name)} not restored: {exc.strerror}{more}"),
                )


def _writer_main(tasks, results, make_writer, cancel, forked: bool) -> None:
    """A writer's loop: batches of encoded entries in, a report per batch out."""
    if forked:
        die_with_parent()
    writer = make_writer(cancel.is_set, lambda n, files: results.put(("progress", n, files)))
    try:
        while True:
            task = tasks.get()
            if task is None:
                break
            batch_id, encoded = task
            entries, _ = decode_entries(encoded)
            try:
                for e in entries:
                    if cancel.is_set():
                        break
                    writer.restore(e)
                    writer.send_progress(every=PROGRESS_SECONDS)
            except _Cancelled:
                pass  # the file being written was removed; the rest is not restored
            results.put(("done", batch_id, writer.report()))
    except BaseException as exc:  # the calling process raises it as an EngineError
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        writer.close()
        results.put(("exit", None))


class _Writers:
    """The writers: forked processes when the store can be read from several processes
    (local storage; no GIL hand-offs around every system call), else threads."""

    def __init__(self, count: int, make_writer, processes: bool):
        self.count = count
        self.processes = processes
        if processes:
            ctx = multiprocessing.get_context("fork")
            self.tasks, self.results, self.cancel = (
                ctx.SimpleQueue(),
                ctx.SimpleQueue(),
                ctx.Event(),
            )
            self.procs = [
                ctx.Process(target=_writer_main, daemon=True,
                            args=(self.tasks, self.results, make_writer, self.cancel, True))
                for _ in range(count)
            ]  # fmt: skip
        else:
            self.tasks, self.results = queue.SimpleQueue(), queue.SimpleQueue()
            self.cancel = threading.Event()
            self.procs = [
                threading.Thread(target=_writer_main, daemon=True, name="haven-restore",
                                 args=(self.tasks, self.results, make_writer, self.cancel, False))
                for _ in range(count)
            ]  # fmt: skip
        for p in self.procs:
            p.start()
        self.exited = 0

    def get(self, timeout: float):
        if self.processes:
            if self.results._reader.poll(timeout):
                return self.results.get()
            for p in self.procs:
                if not p.is_alive() and p.exitcode not in (0, None):
                    raise EngineError(f"a restore writer process died (exit code {p.exitcode})")
            return None
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            return None

    def finish(self) -> None:
        for _ in self.procs:
            self.tasks.put(None)

    def join(self) -> None:
        for p in self.procs:
            p.join(timeout=10)
            if self.processes and p.is_alive():
                p.kill()
                p.join()


class _Restore:
    """Walks the manifest in the calling thread (folders, symlinks, safety checks) and hands
    files, in batches, to writers: forked processes for local storage (Python threads would
    hand the GIL over around every one of the many small system calls), threads otherwise.
    Hard links to files restored in the same run are made at the end."""

    def __init__(self, repo: Repository, rp: RecoveryPoint, **kw):
        self.repo, self.rp = repo, rp
        self.__dict__.update(kw)
        self.result = RestoreResult(status="completed")
        # ino -> (path in the manifest, folder, restored name): hard-link heads
        self.heads: dict[int, tuple[bytes, list[bytes], bytes]] = {}
        self.links: list[tuple[Entry, tuple[bytes, list[bytes], bytes]]] = []
        self.failed_paths: set[bytes] = set()
        self.xattr_failures: set[tuple[bytes, int]] = set()
        self.xattr_reasons: set[str] = set()
        self.dirs: list[tuple[list[bytes], Entry]] = []
        self.skip_under: list[bytes] = []
        self.cancelled = False
        self.writers: _Writers | None = None
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.batch_id = 0
        self.outstanding = 0

    def warn(self, path: bytes, reason: str, *, failed: bool = False) -> None:
        w = self.reporter.warn(path, reason)
        (self.result.failed if failed else self.result.warnings).append(w)
        if failed:
            self.failed_paths.add(path)

    def _make_writer(self, cancelled, progress) -> _FileWriter:
        return _FileWriter(self.repo, self.target, self.on_conflict, self.restore_owner,
                           cancelled, progress)  # fmt: skip

    def run(self) -> RestoreResult:
        rep = self.reporter
        rep.set_phase("restoring")
        if self.paths is None:
            rep.files_total = self.rp.stats.get("files")
            rep.bytes_total = self.rp.stats.get("logical_bytes")
        else:
            files = size = 0
            for e in self._selected_entries():
                if e.kind == FILE:
                    files, size = files + 1, size + e.size
            rep.files_total, rep.bytes_total = files, size
        self.tree = _Tree(self.target)
        try:
            for e in self._selected_entries():
                if self.cancel.is_set():
                    self.cancelled = True
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
                rep.emit()
            self._send()
            self._wait_writers()
            if not (self.cancelled or self.cancel.is_set()):
                self._make_links()
                self._apply_dir_metadata()
        finally:
            if self.writers is not None:
                self.writers.cancel.set()
                self.writers.finish()
                self.writers.join()
            self.tree.close()
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

    def _selected_entries(self):
        """The entries to restore, in tree order; reading stops past the last selection."""
        for e in self.repo.iter_entries(self.rp, ChunkReader(self.repo)):
            if self.paths is None or _selected(e.path, self.paths):
                yield e
            elif _past_all(e.path, self.paths):
                return

    def _entry(self, e: Entry, comps: list[bytes]) -> None:
        dfd = self.tree.dir_fd(comps[:-1])  # (the writers find the folder made)
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
            placed = self._main_writer()._place(
                e, name, dfd, lambda n: os.symlink(e.target, n, dir_fd=dfd)
            )
            self._take_report(self._main_writer().report())
            if placed is not None:
                _, created, final = placed
                self._meta_link(created, dfd, e)
                if created != final:
                    os.rename(created, final, src_dir_fd=dfd, dst_dir_fd=dfd)
                self.result.symlinks += 1
            return
        if e.nlink > 1:
            head = self.heads.get(e.ino)
            if head is not None and head[0] in (e.target, e.path):
                self.links.append((e, head))  # made once every file is written
                return
            key = e.target if e.kind == HARDLINK else e.path
            self.heads[e.ino] = (key, comps[:-1], name)
        self.batch.append(e.encoded or encode_entry(e))
        self.batch_bytes += e.size
        if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
            self._send()

    # -- the writers -----------------------------------------------------------------------
    def _send(self) -> None:
        if not self.batch:
            return
        if self.writers is None:
            processes = getattr(self.repo.store, "fork_safe_reads", False)
            self.writers = _Writers(self.workers, self._make_writer, processes)
        while self.outstanding >= 2 * self.workers:
            self._drain(0.2)
        self.batch_id += 1
        self.writers.tasks.put((self.batch_id, b"".join(self.batch)))
        self.outstanding += 1
        self.batch, self.batch_bytes = [], 0

    def _drain(self, timeout: float) -> None:
        if self.cancel.is_set():
            self.cancelled = True
            self.writers.cancel.set()
        msg = self.writers.get(timeout)
        if msg is not None:
            self._handle(msg)
        self.reporter.emit()

    def _wait_writers(self) -> None:
        if self.writers is None:
            return
        if self.cancel.is_set():
            self.cancelled = True
            self.writers.cancel.set()
        self.writers.finish()
        while self.writers.exited < self.writers.count:
            self._drain(0.2)
        self.writers.join()
        self.writers = None

    def _handle(self, msg) -> None:
        kind = msg[0]
        if kind == "progress":
            self.reporter.bytes_done += msg[1]
            self.reporter.files_done += msg[2]
        elif kind == "done":
            self.outstanding -= 1
            self._take_report(msg[2])
        elif kind == "exit":
            self.writers.exited += 1
        elif kind == "error":
            raise EngineError(f"a restore writer failed: {msg[1]}")

    def _take_report(self, r: dict) -> None:
        res, rep = self.result, self.reporter
        res.files += r["files"]
        res.bytes += r["bytes"]
        res.skipped += r["skipped"]
        rep.bytes_done += r["progress"][0]
        rep.files_done += r["progress"][1]
        for path, reason in r["warnings"]:
            if reason.startswith("extended attribute "):
                if reason in self.xattr_reasons:
                    continue  # another writer met it first
                self.xattr_reasons.add(reason)
            self.warn(path, reason)
        for path, reason in r["failed"]:
            self.warn(path, reason, failed=True)

    def _main_writer(self) -> _FileWriter:
        w = getattr(self, "_writer", None)
        if w is None:
            w = self._writer = self._make_writer(self.cancel.is_set, lambda n, files: None)
        return w

    def _make_links(self) -> None:
        """Hard links, now that their heads are written (a head that failed: write again)."""
        w = self._main_writer()
        for e, (key, head_dir, head_name) in self.links:
            if self.cancel.is_set():
                self.cancelled = True
                return
            try:
                if key in self.failed_paths or not w.link(e, head_dir, head_name):
                    w.restore(e)
            except _Cancelled:
                self.cancelled = True
            except (UnsafePath, OSError) as exc:
                w.failed.append((e.path, f"cannot restore: {exc}"))
            self._take_report(w.report())

    # -- metadata ----------------------------------------------------------------------------
    def _meta_fd(self, fd: int, e: Entry) -> None:
        if self.restore_owner:
            try:
                os.fchown(fd, *owner_of(e))
            except PermissionError:
                self.warn(e.path, "owner not restored: permission denied")
        os.fchmod(fd, e.mode)
        if e.xattrs:  # (default ACLs of folders among them)
            for path, reason in set_xattrs(fd, e, self.restore_owner, self.xattr_failures):
                self.warn(path, reason)
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))

    def _meta_link(self, name: bytes, dfd: int, e: Entry) -> None:
        if self.restore_owner:
            try:
                os.chown(name, *owner_of(e), dir_fd=dfd, follow_symlinks=False)
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


def owner_of(e: Entry) -> tuple[int, int]:
    """By name when this machine knows the name, else the stored number."""
    return _uid(e.user, e.uid), _gid(e.group, e.gid)


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
    writers: int | None = None,
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
        workers=max(1, writers or min(max(os.cpu_count() or 1, 2), 4)),
    )
    res = job.run()
    res.duration_s = round(time.monotonic() - started, 3)
    job.reporter.finish(res.status, message=res.message, failed=len(res.failed))
    return res
