"""``run_backup``: one recovery point, incremental against the previous one.

Pipeline (designed for 2 cores)::

    walk process (fork, ``scan.WalkAhead``): list ─ lstat ─▶ batches of (path, lstat fields)
                   ▼
    main process: unchanged? (merge-join with the previous manifest, no read)
                   │ changed/new files, in batches (runs of files consecutive in tree order)
                   ▼
    worker processes (fork): read ─ chunk ─ hash ─ compress ─ seal ─ pack (shared memory)
                             ─ encode each file's manifest entry       (bounded result pipe)
                   │ per run: the entries' bytes; per pack: its rows; ids of chunks stored before
                   ▼
    main process: index the packs' rows ─▶ upload thread pool
                  entries joined in tree order ─▶ metadata chunks ─▶ packs ─▶ index deltas
                  ─▶ manifest

Folders, symbolic links, unchanged items, files whose content is reused unread and the later
paths of a hard-link set are encoded in the main process; every file a worker reads is
encoded there, so a first backup's main process does little per file beyond queueing it.

Write order (packs, then index deltas, then the manifest) makes every moment crash-consistent:
a recovery point exists only once its manifest is stored. Uploaded packs that never made it
into an index delta are found again by ``Repository.sync_packs`` and reused by the next run, so
an interrupted run loses at most the packs that were being uploaded (one per upload thread)
and the one being filled.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agents.runtime.engine.chunkers import ChunkerPool
from agents.runtime.engine.counting import CountProcess
from agents.runtime.engine.errors import Cancelled, EngineError, InvalidArgument
from agents.runtime.engine.format import (
    DIR,
    ENTRY,
    FILE,
    HARDLINK,
    HOLE_ID,
    PACK_ROW,
    REF,
    SYMLINK,
    XATTRS,
    Entry,
    EntryRef,
    encode_entry,
    entry_at,
)
from agents.runtime.engine.metadata import MetadataWriter
from agents.runtime.engine.owners import OwnerNames
from agents.runtime.engine.packer import Packer
from agents.runtime.engine.previous import PreviousCursor
from agents.runtime.engine.progress import ProgressSink, Reporter
from agents.runtime.engine.repository import RecoveryPoint, Repository, default_hostname, now
from agents.runtime.engine.scan import WalkAhead, WalkStat, normalize_sources, read_xattrs
from agents.runtime.sizes import size_text

DEFAULT_PACK_SIZE = 16 << 20
BATCH_FILES = 512
BATCH_BYTES = 32 << 20
BATCH_AGE = 1024  # entries walked: a few changed files among many unchanged ones go out early
MAX_PENDING = 50_000
# With a space check, a first backup reads its first file once the count's first total
# (a report's worth of files, or a small tree's all) has been checked, or after this long.
FIRST_TOTAL_WAIT = 2.0


@dataclass
class BackupResult:
    """What a backup did. ``status``: completed, completed_with_warnings or cancelled."""

    status: str
    recovery_point: str | None
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    files_read: int = 0
    files_unchanged: int = 0
    logical_bytes: int = 0  # sum of the sizes of the backed-up files
    new_bytes: int = 0  # plain bytes of chunks this run added (after dedup)
    added_bytes: int = 0  # bytes this run uploaded (packs, index, manifest)
    stored_bytes: int = 0  # size of all packs the recovery point references
    packs: list[str] = field(default_factory=list)  # pack ids the recovery point references
    warnings: list[dict] = field(default_factory=list)
    duration_s: float = 0.0
    message: str = ""


class _Run:
    """Files that follow one another in tree order, read and encoded by one chunking process:
    ``data`` is their entries' bytes once its task is done (a list when files of hard-link
    sets came back to be encoded here: ``_Backup._linked``)."""

    __slots__ = ("data", "jobs")

    def __init__(self) -> None:
        self.jobs: list[tuple] = []  # (sent with the task, then dropped)
        self.data: bytes | list | None = None


class _Link:
    """The first file of a hard-link set, as its later paths' entries need it."""

    __slots__ = ("content", "done", "drop", "path", "size")

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.done = False
        self.drop = False
        self.content: list[tuple[bytes, int]] = []
        self.size = 0


class _Pending:
    """A later path of a hard-link set, on its way to the manifest: its entry waits for the
    content of the set's first file."""

    __slots__ = ("entry", "link_to")

    def __init__(self, entry: Entry, link_to: _Link):
        self.entry = entry
        self.link_to = link_to


def run_backup(
    repo: Repository,
    *,
    sources: Iterable[str | bytes | os.PathLike] | None = None,
    excludes: Iterable[str] = (),
    walk: WalkAhead | None = None,
    cache_dir: str | os.PathLike | None = None,
    sink: ProgressSink | None = None,
    cancel: threading.Event | None = None,
    tags: Iterable[str] = (),
    hostname: str | None = None,
    workers: int | None = None,
    compression_level: int = 3,
    pack_size: int = DEFAULT_PACK_SIZE,
    upload_threads: int = 2,
    check_space: Callable[[int], None] | None = None,
    mapped: dict | None = None,
    warnings: Iterable[dict] = (),
) -> BackupResult:
    """Back up ``sources`` (absolute paths) into a new recovery point of ``repo``.

    ``mapped`` (stored prefix -> disk folder, e.g. ``{"system-state": staging}``): folders
    stored under a reserved relative path instead of their own (``paths.PathMap``); they
    are matched with the previous point by stored path, so unchanged files are not read.
    ``warnings`` (``{"path", "reason"}``): raised before the backup by whoever staged a
    mapped folder; reported and counted as the backup's own.

    ``check_space(data_bytes)`` is called with the previous recovery point's size before a
    file is read, and for a first backup with the running total of the data counted beside
    the walk; it raises to stop the backup (a cache location too small for that much
    data), and the backup raises that.

    ``walk``: a ``WalkAhead`` started earlier, e.g. before ``Repository.open`` so the walk
    overlaps the key derivation; its sources and exclusions are the backup's then."""
    if walk is None:
        if sources is None:
            raise InvalidArgument("no sources selected")
        walk = WalkAhead(sources, excludes, mapped=mapped)
    elif mapped is not None:
        walk.close()
        raise InvalidArgument("give the mapped folders to the walk started for them")
    elif sources is not None and normalize_sources(sources) != walk.sources:
        walk.close()
        raise InvalidArgument("the sources differ from those of the walk started for them")
    try:
        job = _Backup(
            repo,
            sources=walk.sources,
            excluder=walk.excluder,
            walker=walk,
            disk_of=walk.mapping.disk,
            cache_dir=Path(cache_dir) if cache_dir is not None else None,
            reporter=Reporter(sink, "backup"),
            cancel=cancel or threading.Event(),
            tags=list(tags),
            hostname=hostname or default_hostname(),
            workers=workers or max(1, min(os.cpu_count() or 1, 4)),
            level=compression_level,
            pack_size=pack_size,
            upload_threads=upload_threads,
            check_space=check_space,
        )
        for warning in warnings:
            job.warn(warning.get("path"), warning["reason"])
        return job.run()
    finally:
        walk.close()


class _Backup:
    def __init__(self, repo: Repository, **kw):
        self.repo = repo
        self.__dict__.update(kw)
        self.space_refusal: Exception | None = None  # check_space's, from the count
        self.first_total = threading.Event()  # the count's first total checked (or it ended)
        self.ended = False  # run() is over: the count, if still going, is of no more use
        self.warnings: list[dict] = []
        # in tree order: encoded entries, runs of files being read, later hard-link paths
        self.pending: deque[bytes | _Run | _Pending] = deque()
        self.open_run: _Run | None = None  # the last of ``pending``, still taking files
        self.batch: list[_Run] = []  # the runs of the task being gathered
        self.batch_files = 0
        self.batch_bytes = 0
        self.batch_tick = 0
        self.task_runs: dict[int, list[_Run]] = {}  # tasks sent, not done
        self.links: dict[tuple[int, int], _Link] = {}  # (dev, inode) -> first path of a set
        self.link_jobs: dict[int, _Link] = {}  # the worker's key for a set's first file
        self.link_seq = 0
        self.tick = 0
        self.outstanding = 0
        self.task_id = 0
        self.names = OwnerNames()
        # (uid, gid) -> (len(user name), user name + group name), as an entry stores them
        self.owner_bytes: dict[tuple[int, int], tuple[int, bytes]] = {}
        self.referenced: set[int] = set()
        self.unresolved: set[bytes] = set()  # referenced chunks whose pack has not arrived
        self.exited = 0
        self.base_chunks = 0
        self.expected_chunks = 0  # set by a first backup's count when it is complete
        self.large_files: dict[bytes, int] = {}  # by a first backup's count (``count_tree``)
        self.result = BackupResult(status="completed", recovery_point=None)

    def warn(self, path: bytes | None, reason: str) -> None:
        self.warnings.append(self.reporter.warn(path, reason))

    def run(self) -> BackupResult:
        started = time.monotonic()
        rep = self.reporter
        rep.set_phase("scanning")
        self.repo.load_index(self.cache_dir)
        self.repo.sync_packs()
        self.base_chunks = len(self.repo.index)
        prev = self._previous()
        if self.check_space is not None:
            self.check_space(int(prev.stats.get("logical_bytes") or 0) if prev else 0)
        if prev is not None:
            rep.files_total = prev.stats.get("files")
            rep.bytes_total = prev.stats.get("logical_bytes")
        else:
            # Nothing to compare with: the walk need not lstat files (the workers fstat them).
            self.walker.skip_file_lstat.set()
            threading.Thread(target=self._count, daemon=True, name="haven-count").start()
            if self.check_space is not None:
                # The count's first total checked before a file is read: a tree counted in
                # one go (fewer files than a report) is refused before anything is written,
                # and not only when the backup happens to last longer than the count.
                self.first_total.wait(FIRST_TOTAL_WAIT)
                if self.space_refusal is not None:
                    raise self.space_refusal
        self.cursor = PreviousCursor(self.repo.iter_entry_refs(prev) if prev else None)
        self.fresh = prev is None  # nothing to merge-join with
        self.packer = Packer(
            self.repo, self.pack_size, self.upload_threads, self.cancel, self._upload_wait
        )
        self.meta = MetadataWriter(self.repo, self.packer)
        self.pool = ChunkerPool(
            self.repo, self.workers, self.level, self.pack_size, self.upload_threads
        )
        rep.set_phase("backing_up")
        ok = False
        try:
            try:
                cancelled = self._walk()
                if not cancelled:
                    self._submit()
                    cancelled = self._drain(until_idle=True)
                if not cancelled:
                    cancelled = self._finish_workers()
                if not cancelled:
                    if self.cursor.broken:
                        self.warn(None, "the previous recovery point could not be read, so "
                                  f"every file was read again ({self.cursor.broken})")  # fmt: skip
                    rep.set_phase("finalizing")
                    self._flush_ready()
                    meta_ids = self.meta.finish()
                    self.packer.seal_pack()
                    self.packer.close()
                    cancelled = self.cancel.is_set()
            except Cancelled:  # waiting for an upload slot (see Packer)
                cancelled = True
            if cancelled and self.space_refusal is not None:
                raise self.space_refusal
            if cancelled:
                self.pool.stop(kill=True)
                self.packer.close(abandon=True)
                self._save_index_cache()
                self.result.status = "cancelled"
                self.result.message = (
                    "backup cancelled: no recovery point was created; the data uploaded so far "
                    "is kept and reused by the next backup"
                )
                ok = True
                return self._finish(started)
            self._progress()
            for cid in meta_ids:
                self._reference(cid)
            rp = self._recovery_point(prev, meta_ids)
            self.repo.write_recovery_point(rp)
            # the point is committed: a full cache disk only costs the next backup time
            self._save_index_cache()
            self.result.recovery_point = rp.id
            ok = True
            return self._finish(started)
        finally:
            self.ended = True
            if not ok:
                self.pool.stop(kill=True)
                # the error already propagating is the one to report, not an upload's echo of it
                with contextlib.suppress(Exception):
                    self.packer.close(abandon=True)

    def _save_index_cache(self) -> None:
        problem = self.repo.save_index_cache(self.cache_dir)
        if problem:
            self.warn(None, problem)
            if self.result.status == "completed":
                self.result.status = "completed_with_warnings"

    def _progress(self) -> None:
        """Copy the packer's live upload counters to the reporter."""
        rep, packer = self.reporter, self.packer
        rep.new_bytes = packer.new_bytes
        rep.stored_bytes = packer.uploaded_bytes
        rep.unsettled_bytes = packer.waiting_raw

    def _upload_wait(self) -> None:
        """Called every ``WAIT_TICK`` while the pipeline waits for an upload."""
        self._progress()
        self.reporter.emit()

    def _count(self) -> None:
        """A first backup's totals, counted beside the walk (in a process of its own:
        ``counting``); with ``check_space``, the running total is the estimate the cache
        location's room is checked against (an incremental backup checks the previous
        point's size before it starts)."""
        files = 0
        count = CountProcess(self.sources, self.excluder)
        try:
            for files, size, large in count.totals(lambda: self.ended or self.cancel.is_set()):
                self.large_files.update(large)
                self.reporter.files_total, self.reporter.bytes_total = files, size
                if self.check_space is None:
                    continue
                try:
                    self.check_space(size)
                except Exception as exc:  # the caller's refusal, raised again by the backup
                    self.space_refusal = exc
                    self.cancel.set()
                    return
                self.first_total.set()
        finally:
            self.first_total.set()
            count.close()
        if count.complete:
            # Small files are a chunk each: the main process sizes the chunk index for them
            # in one step (``ChunkIndex.reserve``) rather than rehashing it at every doubling.
            self.expected_chunks = self.base_chunks + files

    def _previous(self) -> RecoveryPoint | None:
        rps = [
            rp
            for rp in self.repo.list_recovery_points()
            if rp.hostname == self.hostname and rp.status != "cancelled"
        ]
        return rps[-1] if rps else None

    # -- the walk --------------------------------------------------------------------------
    def _walk(self) -> bool:
        rep, cancel, res = self.reporter, self.cancel, self.result
        find, fresh, isreg = self.cursor.find, self.fresh, stat.S_ISREG
        large = self.large_files
        tick = 0  # (mirrored in self.tick for the batches' age)
        poll_at = 0  # the tick from which to look at cancel and the results again
        for path, st, problem in itertools.chain.from_iterable(self.walker.batches()):
            if tick >= poll_at and cancel.is_set():
                return True
            if type(path) is list:
                # A folder's regular files that the walk did not lstat (``scan.WalkAhead``),
                # in one item: a first backup queues them as the single files below.
                if fresh:
                    run = self.open_run or self._open_run()
                    run.jobs += path
                    n = len(path)
                    self.batch_files += n
                    if large:
                        self.batch_bytes += sum([large.pop(p, 0) for p in path])
                    res.files += n
                    res.files_read += n
                else:
                    for p in path:
                        self._unstated(p, find(p))
                path = path[-1]
            elif st is None:
                if problem is not None:
                    self.warn(path, problem)
                    continue
                if fresh:
                    # A regular file the walk did not lstat (a first backup's, nearly all its
                    # items): the worker takes its metadata from the fstat of the open file,
                    # and hands back one with other hard links (``_linked``).
                    run = self.open_run or self._open_run()
                    run.jobs.append(path)
                    self.batch_files += 1
                    if large:  # (its size, when the count has seen it and it is large)
                        self.batch_bytes += large.pop(path, 0)
                    res.files += 1
                    res.files_read += 1
                else:
                    self._unstated(path, find(path))
            else:  # (``st``: the fields of a ``WalkStat``, a plain tuple)
                prev = None if fresh else find(path)
                if prev is None and isreg(st[0]) and st[3] == 1 and path[:1] == b"/":
                    # A new file: a worker reads it and encodes its entry; all that happens
                    # here is this.
                    run = self.open_run or self._open_run()
                    run.jobs.append((path, st[6], st[7]))
                    self.batch_files += 1
                    self.batch_bytes += st[6]
                    res.files += 1
                    res.files_read += 1
                elif not self._unchanged(st, prev):
                    self._changed(path, WalkStat(st), prev)
            rep.current = path
            tick += 1
            self.tick = tick
            if (
                self.batch_files >= BATCH_FILES
                or self.batch_bytes >= BATCH_BYTES
                or (self.batch and tick - self.batch_tick >= BATCH_AGE)
            ):
                self._submit()
            elif tick < poll_at:
                continue  # per-entry polling costs a syscall each: look at results every 64
            poll_at = tick + 64
            if self._drain(until_idle=False):
                return True
            self._flush_ready()
            rep.emit()
        return False

    def _unstated(self, path: bytes, prev: EntryRef | None) -> None:
        """A regular file the walk did not lstat, in a backup that compares with a previous
        point (a walk started with ``lstat_files=False``): lstat'ed here."""
        try:
            st = WalkStat.of(os.lstat(path))
        except FileNotFoundError:
            self.warn(path, "vanished before it could be backed up")
            return
        except OSError as exc:
            self.warn(path, f"cannot read metadata: {exc.strerror}")
            return
        if not self._unchanged(st, prev):
            self._changed(path, st, prev)

    def _queue(self, item: bytes | _Pending) -> None:
        """An item after the files queued so far: the next file starts a new run."""
        self.pending.append(item)
        self.open_run = None

    def _open_run(self) -> _Run:
        run = self.open_run = _Run()
        self.pending.append(run)
        if not self.batch:
            self.batch_tick = self.tick
        self.batch.append(run)
        return run

    def _unchanged(self, st: tuple, prev: EntryRef | None) -> bool:
        """The item is exactly as in the previous recovery point: queue its old entry's bytes.

        Same inode, change time and modification time mean nothing was written, chmod-ed,
        chown-ed or replaced (any of those moves the ctime); size, mode and owner are compared
        too. A file counts only when every chunk it needs is still stored. Hard-linked files
        take the ordinary path (their link set is rebuilt each time). ``prev`` is compared
        where it lies in the manifest buffer (``format.scan_entries``): no ``Entry`` is built.
        ``st``: a ``WalkStat``'s fields (unpacked here: the hot path of a no-change backup)."""
        if prev is None:
            return False
        _path, head, start, end, buf = prev
        kind, mode, uid, gid, nlink, mt, ct, ino, size, lu, lg, lp, lt, nc = head
        st_mode, st_ino, _dev, st_nlink, st_uid, st_gid, st_size, st_mt, st_ct = st
        if (
            ct != st_ct
            or mt != st_mt
            or ino != st_ino
            or mode != st_mode & 0o7777
            or uid != st_uid
            or gid != st_gid
        ):
            return False
        p = start + ENTRY.size + lp + lt  # the user name, then the group name, then the refs
        owners = self.owner_bytes.get((uid, gid))
        if owners is None:
            user = self.names.user(uid)
            owners = self.owner_bytes[(uid, gid)] = (len(user), user + self.names.group(gid))
        if lu != owners[0] or buf[p : p + lu + lg] != owners[1]:
            return False
        mode, res = st_mode, self.result
        kind &= ~XATTRS
        if kind == FILE and stat.S_ISREG(mode):
            if st_nlink != 1 or nlink != 1 or size != st_size:
                return False
            p += lu + lg
            if nc == 1 and buf[p : p + 32] != HOLE_ID:  # a small file: one chunk, one probe
                pack_no = self.repo.index.pack_of(buf[p : p + 32])
                if pack_no is None:
                    return False
                self.referenced.add(pack_no)
            else:
                rsize = REF.size
                packs = self.repo.index.packs_of_ids(
                    [buf[o : o + 32] for o in range(p, p + nc * rsize, rsize)]
                )
                if packs is None:
                    return False
                self.referenced.update(packs)
            res.files += 1
            res.files_unchanged += 1
            res.logical_bytes += size
            rep = self.reporter
            rep.files_done += 1
            rep.bytes_done += size
        elif kind == DIR and stat.S_ISDIR(mode):
            res.dirs += 1
        elif kind == SYMLINK and stat.S_ISLNK(mode) and lt == st_size:
            res.symlinks += 1  # (a link's target cannot change in place)
        else:
            return False
        self.pending.append(buf[start:end])  # written back as it was read (``_queue``)
        self.open_run = None
        return True

    def _changed(self, path: bytes, st: WalkStat, prev: EntryRef | None) -> None:
        """A new or changed item (or a hard link): build its entry anew, or have a worker
        build it (a file it reads). ``path`` is the stored path; a mapped one is read from its
        disk folder."""
        disk = path if path[:1] == b"/" else self.disk_of(path)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            self._file(path, st, prev, disk)
            return
        entry = self._entry(path, st, 0)
        if stat.S_ISDIR(mode):
            entry.kind = DIR
            entry.xattrs = self._xattrs(path, disk)
            self.result.dirs += 1
            self._queue(encode_entry(entry))
        elif stat.S_ISLNK(mode):
            entry.kind = SYMLINK
            try:
                entry.target = os.readlink(disk)
            except OSError as exc:
                self.warn(path, f"cannot read symbolic link: {exc.strerror}")
                return
            self.result.symlinks += 1
            self._queue(encode_entry(entry))
        else:
            what = (
                "socket" if stat.S_ISSOCK(mode)
                else "FIFO" if stat.S_ISFIFO(mode)
                else "device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
                else "special file"
            )  # fmt: skip
            self.warn(path, f"skipped: a {what} is not backed up")

    def _entry(self, path: bytes, st: WalkStat, kind: int) -> Entry:
        return Entry(
            path=path,
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            ino=st.st_ino,
            nlink=st.st_nlink if stat.S_ISREG(st.st_mode) else 1,
            user=self.names.user(st.st_uid),
            group=self.names.group(st.st_gid),
        )

    def _xattrs(self, path: bytes, disk: bytes) -> list[tuple[bytes, bytes]]:
        """Extended attributes of ``disk`` (``scan.read_xattrs``); a refusal to show them is a
        warning naming ``path``, the stored path."""
        pairs, problem = read_xattrs(disk)
        if problem:
            self.warn(path, problem)
        return pairs

    def _file(self, path: bytes, st: WalkStat, prev: EntryRef | None, disk: bytes) -> None:
        """A file that is not exactly as in the previous point: a later path of a hard-link
        set (its entry waits for the first's content), one whose content can be reused
        unread, or one for a worker to read."""
        res, rep = self.result, self.reporter
        nlink = st.st_nlink
        key = (st.st_dev, st.st_ino)
        if nlink > 1:
            first = self.links.get(key)
            if first is not None:
                entry = self._entry(path, st, HARDLINK)
                entry.xattrs = self._xattrs(path, disk)
                entry.target = first.path
                self._queue(_Pending(entry, first))
                return
        res.files += 1
        content = self._reusable(st, prev)
        if content is not None:  # (its packs are referenced)
            entry = self._entry(path, st, FILE)
            entry.xattrs = self._xattrs(path, disk)
            entry.content = content
            entry.size = content[0][1] if len(content) == 1 else sum(n for _, n in content)
            res.files_unchanged += 1
            res.logical_bytes += entry.size
            rep.files_done += 1
            rep.bytes_done += st.st_size
            self._queue(encode_entry(entry))
            if nlink > 1:
                link = self.links[key] = _Link(path)
                link.done, link.content, link.size = True, content, entry.size
            return
        if nlink > 1:
            link = self.links[key] = _Link(path)
            self.link_seq += 1
            self.link_jobs[self.link_seq] = link
            job: tuple = (path, st.st_size, st.st_mtime_ns, disk, nlink, self.link_seq)
        elif disk != path:
            job = (path, st.st_size, st.st_mtime_ns, disk, 1, None)
        else:
            job = (path, st.st_size, st.st_mtime_ns)
        run = self.open_run or self._open_run()
        run.jobs.append(job)
        self.batch_files += 1
        self.batch_bytes += st.st_size
        res.files_read += 1

    def _reusable(self, st: WalkStat, prev: EntryRef | None) -> list | None:
        """The previous entry's content when its file is the same (inode, times and size)
        and every chunk of it is stored (its packs are then referenced), else None."""
        if prev is None:
            return None
        kind, _mode, _uid, _gid, _nlink, mt, ct, ino, size = prev[1][:9]
        if (
            kind & ~XATTRS not in (FILE, HARDLINK)
            or size != st.st_size
            or mt != st.st_mtime_ns
            or ct != st.st_ctime_ns
            or ino != st.st_ino
        ):
            return None
        content = entry_at(prev).content
        packs = self.repo.index.packs_of(content)
        if packs is None:
            return None
        self.referenced.update(packs)
        return content

    # -- workers ---------------------------------------------------------------------------
    def _submit(self) -> None:
        if not self.batch:
            return
        self.pool.start()
        self.task_id += 1
        self.pool.tasks.put((self.task_id, [run.jobs for run in self.batch], True))
        self.task_runs[self.task_id] = self.batch
        self.outstanding += 1
        self.batch, self.batch_files, self.batch_bytes = [], 0, 0
        self.open_run = None

    def _drain(self, *, until_idle: bool) -> bool:
        """Handle worker results; block while too much is in flight (or until idle).

        Returns True when cancelled."""
        limit = 2 * self.workers
        while True:
            if self.cancel.is_set():
                return True
            if not self.pool.procs:
                return False
            if self.batch and len(self.pending) > MAX_PENDING:
                self._submit()  # the entries waiting may wait on this very batch
            if until_idle:
                busy = self.outstanding > 0
            else:
                busy = self.outstanding >= limit or (
                    len(self.pending) > MAX_PENDING and self.outstanding > 0
                )
            msg = self.pool.get(0.2 if busy else 0)
            if msg is None:
                if not busy:
                    return False
                self.reporter.emit()
                continue
            self._handle(msg)
            self._flush_ready()
            self.reporter.emit()

    def _finish_workers(self) -> bool:
        """Let the workers pack what they hold and end; True when cancelled meanwhile."""
        pool = self.pool
        if not pool.procs:
            return False
        pool.ask_to_finish()
        while self.exited < len(pool.procs):
            if self.cancel.is_set():
                return True
            msg = pool.get(0.2)
            if msg is None:
                self.reporter.emit()
                continue
            self._handle(msg)
        pool.stop(kill=False)
        if self.unresolved:
            raise EngineError(
                f"internal error: {len(self.unresolved)} chunks were read but never packed"
            )
        return False

    def _handle(self, msg) -> None:
        """A worker's message (``chunkers.run_task`` describes them)."""
        kind = msg[0]
        if kind == "pack":
            self._handle_pack(*msg[1:])
            return
        if kind == "exit":
            self.exited += 1
            return
        _kind, task, read, new_raw, refs, files, warnings = msg[:7]
        rep, packer, res = self.reporter, self.packer, self.result
        packer.sealed_raw += new_raw  # packed by the worker, not uploaded yet (referenced)
        for cid in refs:
            self._reference(cid)
        rep.bytes_done += read
        rep.files_done += files
        for path, reason in warnings:
            self.warn(path, reason)
        if kind == "done":
            blobs, links, logical, skipped = msg[7:]
            for run, blob in zip(self.task_runs.pop(task), blobs, strict=True):
                run.data, run.jobs = blob, []
            for key, content, size, dropped in links:
                link = self.link_jobs.pop(key)
                link.done, link.drop, link.content, link.size = True, dropped, content, size
            res.logical_bytes += logical
            res.files -= skipped
            self.outstanding -= 1
        packer.reap(block=False)
        self._progress()

    def _handle_pack(
        self, _wid: int, buf_no: int, length: int, pack_id: bytes, rows: bytes, raw: int
    ) -> None:
        buffers, index = self.pool.buffers, self.repo.index
        if self.expected_chunks:  # a first backup's count is done: size the index once
            index.reserve(self.expected_chunks)
            self.expected_chunks = 0
        pack_no = self.packer.add_pack(
            pack_id, buffers.view(buf_no, length), rows, raw, lambda: buffers.release(buf_no)
        )
        # Every chunk a worker packs was new to a file it read: the pack is referenced
        # (a chunk another worker packed first, or of a file dropped later, only costs space
        # until compaction).
        self.referenced.add(pack_no)
        if self.unresolved:
            unresolved = self.unresolved
            for o in range(0, len(rows), PACK_ROW.size):
                cid = rows[o : o + 32]
                if cid in unresolved:
                    unresolved.discard(cid)
                    self._reference(cid)
        self._progress()

    # -- entries out, in tree order ------------------------------------------------------------
    def _flush_ready(self) -> None:
        """Entries whose items are done go to the metadata stream, in tree order, joined
        into one ``add_encoded`` call per flush."""
        pending = self.pending
        out: list[bytes] = []
        while pending:
            p = pending[0]
            if isinstance(p, bytes):  # counted and referenced when it was queued
                out.append(p)
            elif isinstance(p, _Run):
                data = p.data
                if data is None:
                    break
                if isinstance(data, bytes):
                    out.append(data)
                else:
                    self._linked(data, out)
            else:  # a later path of a hard-link set
                link = p.link_to
                if not link.done:
                    break
                if link.drop:
                    self.warn(p.entry.path, "hard link to a file that could not be read; skipped")
                else:
                    p.entry.content, p.entry.size = link.content, link.size
                    out.append(encode_entry(p.entry))
            pending.popleft()
        if out:
            self.meta.add_encoded(b"".join(out))

    def _linked(self, pieces: list, out: list[bytes]) -> None:
        """A run with files of hard-link sets the walk did not lstat (``chunkers.run_task``
        hands them back read, between the other entries' bytes), in tree order: the first
        path of a set met here is its file, each later one a link to it."""
        res = self.result
        for piece in pieces:
            if isinstance(piece, bytes):
                out.append(piece)
                continue
            path, st, size, content, xattrs = piece
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is None or first.drop:
                first = self.links[key] = _Link(path)
                first.done, first.content, first.size = True, content, size
                entry = self._entry(path, st, FILE)
                res.logical_bytes += size
            else:
                # The content read here: the first path's may still be on its way (a file
                # lstat'ed by the walk before it was told to stop, later in tree order).
                entry = self._entry(path, st, HARDLINK)
                entry.target = first.path
                res.files -= 1
            entry.xattrs, entry.content, entry.size = xattrs, content, size
            out.append(encode_entry(entry))

    def _reference(self, cid: bytes) -> None:
        pack_no = self.repo.index.pack_of(cid)
        if pack_no is not None:
            self.referenced.add(pack_no)
        else:
            self.unresolved.add(cid)  # in a pack a worker is still filling

    def _recovery_point(self, prev: RecoveryPoint | None, meta_ids: list[bytes]) -> RecoveryPoint:
        index = self.repo.index
        packs = sorted(index.pack_ids[no].hex() for no in self.referenced)
        res = self.result
        res.packs = packs
        res.stored_bytes = sum(index.pack_sizes[no] for no in self.referenced)
        res.new_bytes = self.packer.new_bytes
        res.added_bytes = self.packer.added_bytes
        res.status = "completed_with_warnings" if self.warnings else "completed"
        # The totals were an estimate (the previous point's, or a count beside the walk): a
        # finished backup's are what it backed up, also when files went away.
        rep = self.reporter
        rep.files_total, rep.bytes_total = rep.files_done, rep.bytes_done
        return RecoveryPoint(
            id=os.urandom(16).hex(),
            time=now(),
            hostname=self.hostname,
            sources=[os.fsdecode(s) for s in self.sources],
            tags=self.tags,
            status=res.status,
            stats={
                "files": res.files,
                "dirs": res.dirs,
                "symlinks": res.symlinks,
                "logical_bytes": res.logical_bytes,
                "new_bytes": res.new_bytes,
                "added_bytes": res.added_bytes,
                "stored_bytes": res.stored_bytes,
                "warnings": len(self.warnings),
            },
            packs=packs,
            meta=[cid.hex() for cid in meta_ids],
            parent=prev.id if prev else None,
        )

    def _finish(self, started: float) -> BackupResult:
        res = self.result
        res.warnings = self.warnings
        res.duration_s = round(time.monotonic() - started, 3)
        res.new_bytes = self.packer.new_bytes
        res.added_bytes = self.packer.added_bytes
        if res.status != "cancelled":
            res.message = (
                f"backed up {_count(res.files, 'file')} ({size_text(res.logical_bytes)}), "
                f"{size_text(res.new_bytes)} of new data, {_count(len(self.warnings), 'warning')}"
            )
        self.reporter.finish(
            res.status,
            recovery_point=res.recovery_point,
            warnings=len(self.warnings),
            message=res.message,
        )
        return res


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
