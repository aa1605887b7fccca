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

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agents.runtime.engine.errors import (
    Cancelled,
    EngineError,
    InvalidArgument,
    TargetFull,
    UnsafePath,
)
from agents.runtime.engine.file_writer import (
    DISK_FULL,
    NO_ID,
    FileWriter,
    set_xattrs,
    unprivileged,
)
from agents.runtime.engine.format import (
    DIR,
    FILE,
    HARDLINK,
    SYMLINK,
    XATTRS,
    Entry,
    EntryRef,
    encode_entry,
    entry_at,
)
from agents.runtime.engine.owners import owner_of
from agents.runtime.engine.paths import (
    RESERVED_ROOTS,
    is_inside,
    is_reserved,
    is_selected,
    past_all_selections,
    stored_paths,
)
from agents.runtime.engine.progress import ProgressSink, Reporter
from agents.runtime.engine.repository import RecoveryPoint, Repository
from agents.runtime.engine.target import TargetTree, is_dir, lstat_at, safe_components
from agents.runtime.engine.writer_pool import WriterPool
from agents.runtime.protocol import (
    CONFLICT_CHOICES,
    CONFLICT_COPY,
    CONFLICT_OVERWRITE,
    CONFLICT_SKIP,
)

# The wire's conflict choices, listed default first (in messages and the engine CLI).
CONFLICT_CHOICES_DEFAULT_FIRST = (CONFLICT_OVERWRITE, CONFLICT_SKIP, CONFLICT_COPY)
BATCH_FILES = 128
BATCH_BYTES = 16 << 20


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
        self.writers: WriterPool | None = None
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.batch_id = 0
        self.outstanding = 0
        self.full_files = 0  # files not written because the target's disk is full
        # selections not met yet (a reserved part is only ever chosen by its root's name)
        self.unmatched: set[bytes] = {p for p in self.paths or () if p in RESERVED_ROOTS}

    def warn(self, path: bytes, reason: str, *, failed: bool = False) -> None:
        w = self.reporter.warn(path, reason)
        (self.result.failed if failed else self.result.warnings).append(w)
        if failed:
            self.failed_paths.add(path)

    def _make_writer(self, cancelled, progress) -> FileWriter:
        return FileWriter(self.repo, self.target, self.on_conflict, self.restore_owner,
                           cancelled, progress)  # fmt: skip

    def run(self) -> RestoreResult:
        rep = self.reporter
        rep.set_phase("restoring")
        if self.paths is None:
            rep.files_total = self.rp.stats.get("files")
            rep.bytes_total = self.rp.stats.get("logical_bytes")
        else:
            files = size = 0
            for _path, head, *_ in self._selected_refs():
                if head[0] & ~XATTRS == FILE:
                    files, size = files + 1, size + head[8]
            rep.files_total, rep.bytes_total = files, size
        self.tree = TargetTree(self.target)
        try:
            for ref in self._selected_refs():
                if self.cancel.is_set():
                    self.cancelled = True
                    break
                if self.full_files:
                    break  # the rest would fail the same way; finished files are kept
                path, head, start, end, buf = ref
                if self.skip_under and any(is_inside(path, s) for s in self.skip_under):
                    continue
                try:
                    if head[0] & ~XATTRS == FILE and head[4] <= 1 and path != b"/":
                        # The usual item, a file that is not a hard link: checked, its folder
                        # made, and handed to a writer as the bytes it was stored as.
                        self.tree.parent_fd(path)
                        self.batch.append(buf[start:end])
                        self.batch_bytes += head[8]
                        if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
                            rep.current = path
                            self._send()
                        continue
                    rep.current = path
                    comps = safe_components(path)
                    if not comps:
                        continue  # the root itself: the target is its stand-in
                    self._entry(entry_at(ref), comps)
                except UnsafePath as exc:
                    self.warn(path, str(exc), failed=True)
                except OSError as exc:
                    self.full_files += exc.errno in DISK_FULL
                    self.warn(path, f"cannot restore: {exc.strerror or exc}", failed=True)
                rep.emit()
            self._send()
            self._wait_writers()
            for missing in sorted(self.unmatched):
                self.warn(missing, "not in this recovery point: it holds no System State (the "
                          "machine's policy did not include System State when it was made)")  # fmt: skip
            if not (self.cancelled or self.cancel.is_set() or self.full_files):
                self._make_links()
                self._apply_dir_metadata()
        finally:
            if self.writers is not None:
                self.writers.cancel.set()
                self.writers.finish()
                self.writers.join()
            self.tree.close()
        res = self.result
        if self.full_files:
            raise TargetFull(self.target, res.files, self._space_needed())
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

    def _selected_refs(self) -> Iterator[EntryRef]:
        """The entries to restore, located (``format.scan_entries``), in tree order; reading
        stops past the last selection."""
        # Everything (None) leaves out a reserved part (System State): that is restored only
        # when selected by name, so it never lands in / on a restore to the original place.
        for refs in self.repo.iter_entry_refs(self.rp):
            for ref in refs:
                path = ref[0]
                if self.paths is None:
                    if not is_reserved(path):
                        yield ref  # (a hostile relative path is refused by safe_components)
                elif is_selected(path, self.paths):
                    if path in self.unmatched:
                        self.unmatched.discard(path)
                    yield ref
                elif past_all_selections(path, self.paths):
                    return

    def _entry(self, e: Entry, comps: list[bytes]) -> None:
        dfd = self.tree.dir_fd(comps[:-1])  # (the writers find the folder made)
        name = comps[-1]
        if e.kind == DIR:
            existing = lstat_at(name, dfd)
            if existing is not None and not is_dir(existing):
                if self.on_conflict != CONFLICT_OVERWRITE:
                    self.warn(e.path, "a file with this name exists in the target; folder skipped")
                    self.skip_under.append(e.path)
                    return
                os.unlink(name, dir_fd=dfd)
            self.tree.dir_fd(comps)
            self.dirs.append((comps, e))
            self.result.dirs += 1
            return
        if e.kind == SYMLINK:
            placed = self._main_writer().place(
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
            self.writers = WriterPool(self.workers, self._make_writer, processes)
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

    def _space_needed(self) -> int:
        """The bytes not yet restored (the recovery point's size less what was written)."""
        total = self.reporter.bytes_total or 0
        return max(0, int(total) - self.result.bytes)

    def _take_report(self, r: dict) -> None:
        res, rep = self.result, self.reporter
        self.full_files += r.get("disk_full", (0, 0))[0]
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

    def _main_writer(self) -> FileWriter:
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
            except Cancelled:
                self.cancelled = True
            except (UnsafePath, OSError) as exc:
                w.failed.append((e.path, f"cannot restore: {exc}"))
            self._take_report(w.report())

    # -- metadata ----------------------------------------------------------------------------
    def _meta_fd(self, fd: int, e: Entry) -> None:
        """A folder's metadata; set-id bits, a shared folder's sticky bit and permission
        attributes only when its recorded owner owns it (see ``unprivileged``)."""
        owned = False
        if self.restore_owner or e.mode & 0o7000:
            uid, gid = owner_of(e)
            if NO_ID in (uid, gid):
                if self.restore_owner:
                    self.warn(e.path, f"owner not restored: invalid owner {uid}:{gid}")
            elif self.restore_owner:
                try:
                    os.fchown(fd, uid, gid)
                    owned = True
                except PermissionError:
                    self.warn(e.path, "owner not restored: permission denied")
            else:  # a folder made by this process, or one that was in the target already
                st = os.fstat(fd)
                owned = (st.st_uid, st.st_gid) == (uid, gid)
        os.fchmod(fd, e.mode if owned else unprivileged(e.mode, folder=True))
        if e.xattrs:  # (default ACLs of folders among them)
            permissions = self.restore_owner and owned
            for path, reason in set_xattrs(fd, e, permissions, self.xattr_failures):
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


def run_restore(
    repo: Repository,
    *,
    recovery_point: str | RecoveryPoint,
    target: str | os.PathLike,
    paths: list[str | bytes] | None = None,
    on_conflict: str = CONFLICT_OVERWRITE,
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
    if on_conflict not in CONFLICT_CHOICES:
        choices = ", ".join(CONFLICT_CHOICES_DEFAULT_FIRST)
        raise InvalidArgument(f"on_conflict must be one of {choices}")
    started = time.monotonic()
    repo.load_index()
    rp = repo.recovery_point(recovery_point)
    selections = None if paths is None else stored_paths(paths, what="restore path")
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
