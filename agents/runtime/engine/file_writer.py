"""Writing restored files under the target: the conflict policy, the content, the metadata."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

from agents.runtime.blobstore.base import StorageError
from agents.runtime.engine.errors import Cancelled, IntegrityError, UnsafePath
from agents.runtime.engine.format import HOLE_ID, Entry
from agents.runtime.engine.owners import owner_of
from agents.runtime.engine.repository import ChunkReader, Repository
from agents.runtime.engine.target import TargetTree, is_dir, lstat_at, safe_components
from agents.runtime.protocol import CONFLICT_COPY, CONFLICT_SKIP

_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Set-user-id and set-group-id: kept only on a file or folder given back to its recorded
# owner, else a restore (as root) would hand out a privilege the backup never had.
SET_ID_BITS = stat.S_ISUID | stat.S_ISGID
NO_ID = 0xFFFFFFFF  # chown's "leave unchanged": a recorded owner of -1 is no owner at all
PROGRESS_BYTES = 4 << 20  # a writer reports progress at least every 4 MiB written
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def copy_name(name: bytes, n: int) -> bytes:
    stem, dot, ext = name.rpartition(b".")
    if not dot or not stem:
        return name + b" (%d)" % n
    return stem + b" (%d)." % n + ext


class FileWriter:
    """Writes files under the target: the part of a restore that runs in the writers (and, for
    hard links deferred to the end, in the calling process). One thread per instance; it keeps
    its own folder fds (``TargetTree``) and pack-window cache, and collects what it did in
    ``report()``."""

    def __init__(self, repo: Repository, target: Path, on_conflict: str, restore_owner: bool,
                 cancelled, progress):  # fmt: skip
        self.repo = repo
        self.tree = TargetTree(target)
        self.reader = ChunkReader(repo)
        self.on_conflict = on_conflict
        self.restore_owner = restore_owner
        self.cancelled = cancelled
        self.progress = progress
        self.euid, self.egid = os.geteuid(), os.getegid()
        umask = os.umask(0o022)
        os.umask(umask)
        self.umask = umask
        self._sgid: dict[bytes, bool] = {}  # folder's manifest path -> set-group-id
        self._modes: dict[int, tuple[int, bool]] = {}  # ``_create_mode``'s answers
        self._xattr_failures: set[tuple[bytes, int]] = set()
        self._clear()

    def _clear(self) -> None:
        self.files = self.bytes = self.skipped = 0
        self.unreported_bytes = self.unreported_files = 0
        self.reported_at = time.monotonic()
        self.warnings: list[tuple[bytes, str]] = []
        self.failed: list[tuple[bytes, str]] = []
        self.full_files = self.full_bytes = 0  # not written: the target's disk is full

    def report(self) -> dict:
        """What was done since the last report (then forgotten here)."""
        out = {"files": self.files, "bytes": self.bytes, "skipped": self.skipped,
               "warnings": self.warnings, "failed": self.failed,
               "progress": (self.unreported_bytes, self.unreported_files),
               "disk_full": (self.full_files, self.full_bytes)}  # fmt: skip
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
        ``Cancelled``)."""
        try:
            dfd, name = self.tree.parent_fd(e.path)
            mode, chmod = self._create_mode(e.mode)
            try:  # the usual case, without ``place``'s conflict policy: nothing there yet
                fd, created = os.open(name, _NEW_FLAGS, mode, dir_fd=dfd), name
            except FileExistsError:
                placed = self.place(
                    e, name, dfd, lambda n: os.open(n, _NEW_FLAGS, mode, dir_fd=dfd)
                )
                if placed is None:
                    return
                fd, created, name = placed
            if self._write(e, fd, created, dfd, chmod) and created != name:
                os.rename(created, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except UnsafePath as exc:
            self.failed.append((e.path, str(exc)))
        except OSError as exc:
            if exc.errno in DISK_FULL:
                # the partial file is gone (``_write``); the restore stops and says how much
                self.full_files += 1
                self.full_bytes += e.size
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
            placed = self.place(e, comps[-1], dfd, make)
            if placed is not None and placed[1] != placed[2]:
                os.rename(placed[1], placed[2], src_dir_fd=dfd, dst_dir_fd=dfd)
            if placed is not None:
                self.files += 1
            return True
        except OSError:
            return False  # e.g. the head is on another file system: write the content
        finally:
            os.close(src)

    def _create_mode(self, mode: int) -> tuple[int, bool]:
        """The mode to create with, and whether a ``fchmod`` must follow: none when the
        plain permission bits survive the umask (special bits always need one, after the
        owner is set)."""
        found = self._modes.get(mode)
        if found is None:
            if mode & 0o7000 == 0 and mode & ~self.umask & 0o777 == mode:
                found = self._modes[mode] = (mode, False)
            else:
                found = self._modes[mode] = (0o600, True)
        return found

    def place(self, e: Entry, name: bytes, dfd: int, make):
        """Create ``name`` with ``make`` under the conflict policy: (made, created, final)
        or None when skipped. ``created != final`` means rename over ``final`` when done."""
        try:
            return make(name), name, name
        except FileExistsError:
            pass
        existing = lstat_at(name, dfd)
        if existing is not None and is_dir(existing):
            self.failed.append(
                (e.path, "a folder with this name exists in the target; not restored")
            )
            return None
        if self.on_conflict == CONFLICT_SKIP:
            self.skipped += 1
            return None
        if self.on_conflict == CONFLICT_COPY:
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

    def _write(self, e: Entry, fd: int, name: bytes, dfd: int, chmod: bool) -> bool:
        reader = self.reader
        try:
            pos = 0
            for cid, n in e.content:
                if self.cancelled():
                    raise Cancelled()
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
            self._meta(fd, e, dfd, chmod)
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

    def _meta(self, fd: int, e: Entry, dfd: int, chmod: bool) -> None:
        # Set-id bits and permission attributes only on a file its recorded owner owns: given
        # to them here, or theirs already (they are this process, and the folder is not
        # set-group-id). Without set-id bits and permissions to restore, nothing to decide.
        owned = False
        special = e.mode & SET_ID_BITS
        if self.restore_owner or special:
            uid, gid = owner_of(e)
            if NO_ID in (uid, gid):
                if self.restore_owner:
                    self.warnings.append((e.path, f"owner not restored: invalid owner {uid}:{gid}"))
            elif uid == self.euid and gid == self.egid and not self._setgid_dir(e.path, dfd):
                owned = True
            elif self.restore_owner:
                try:
                    os.fchown(fd, uid, gid)
                    owned, chmod = True, chmod or special != 0  # (chown cleared them)
                except PermissionError:
                    self.warnings.append((e.path, "owner not restored: permission denied"))
        if chmod:
            os.fchmod(fd, e.mode if owned else unprivileged(e.mode))
        if e.xattrs:
            permissions = self.restore_owner and owned
            for path, reason in set_xattrs(fd, e, permissions, self._xattr_failures):
                self.warnings.append((path, reason))
        os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))

    def _setgid_dir(self, path: bytes, dfd: int) -> bool:
        """Is the folder ``dfd`` of ``path`` set-group-id (new files then take its group,
        not ours)?"""
        key = path.rpartition(b"/")[0]
        flag = self._sgid.get(key)
        if flag is None:
            flag = self._sgid[key] = bool(os.fstat(dfd).st_mode & stat.S_ISGID)
        return flag


def unprivileged(mode: int, *, folder: bool = False) -> int:
    """``mode`` for a file or folder not owned by its recorded owner after the restore: no
    set-user-id or set-group-id; a shared (world-writable, sticky) folder loses its sticky
    bit and with it the write right of others, so it never becomes a shared folder of an
    owner who did not make it one."""
    mode &= ~SET_ID_BITS
    if folder and mode & stat.S_ISVTX and mode & stat.S_IWOTH:
        mode &= ~(stat.S_ISVTX | stat.S_IWOTH)
    return mode


def set_xattrs(fd: int, e: Entry, with_permissions: bool, seen: set):
    """Put back ``e``'s extended attributes; yields (path, warning) for each kind of failure
    not seen before (a target file system without them would otherwise warn on every file).
    ACLs (``system.*``) and ``security.*``/``trusted.*`` (capabilities, labels) are
    permissions: set only with ``with_permissions`` (the recorded owner restored too);
    ``user.*`` always."""
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
