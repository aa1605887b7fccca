"""``run_backup``: one recovery point, incremental against the previous one.

Pipeline (designed for 2 cores)::

    main process: walk ─▶ unchanged? (merge-join with the previous manifest, no read)
                   │ changed/new files, in batches
                   ▼
    worker processes (fork): read ─ chunk ─ hash ─ compress ─ seal   (bounded result pipe)
                   │ sealed chunks, in order per file
                   ▼
    main process: dedup against the index ─ pack builder ─▶ upload thread pool
                  entries in tree order ─▶ metadata chunks ─▶ packs ─▶ index deltas ─▶ manifest

Write order (packs, then index deltas, then the manifest) makes every moment crash-consistent:
a recovery point exists only once its manifest is stored. Uploaded packs that never made it
into an index delta are found again by ``Repository.sync_packs`` and reused by the next run, so
an interrupted run loses at most the packs that were being uploaded (one per upload thread)
and the one being filled.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import multiprocessing
import os
import pwd
import queue
import stat
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from agents.runtime.blobstore.base import StorageError
from agents.runtime.engine.chunkers import ClaimTable, PackBuffers, make_chunker, worker_main
from agents.runtime.engine.crypto import ChunkerParams
from agents.runtime.engine.errors import EngineError, InvalidArgument
from agents.runtime.engine.format import (
    DIR,
    FILE,
    HARDLINK,
    HOLE_ID,
    SYMLINK,
    Entry,
    PackBuilder,
    encode_chunk,
    encode_entry,
)
from agents.runtime.engine.progress import ProgressSink, Reporter
from agents.runtime.engine.repository import (
    RecoveryPoint,
    Repository,
    default_hostname,
    now,
    pack_blob_name,
)
from agents.runtime.engine.scan import WalkAhead, count_tree, normalize_sources

DEFAULT_PACK_SIZE = 16 << 20
META_CHUNKER = ChunkerParams(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)
BATCH_FILES = 512
BATCH_BYTES = 32 << 20
BATCH_AGE = 1024  # entries walked: a few changed files among many unchanged ones go out early
MAX_PENDING = 50_000


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


class _Pending:
    """A new or changed item on its way to the manifest (an unchanged one waits in the queue
    as its previous ``Entry``)."""

    __slots__ = ("content", "done", "drop", "entry", "link_to", "warning")

    def __init__(self, entry: Entry, done: bool):
        self.entry = entry
        self.done = done
        self.drop = False
        self.content: list[tuple[bytes, int]] = []
        self.link_to: _Pending | None = None
        self.warning: str | None = None


class _PrevCursor:
    """Merge-join cursor over the previous recovery point (both are in tree order).

    If the previous manifest cannot be read (damaged), the cursor just ends: every file is
    read again, which is slower but correct."""

    def __init__(self, entries: Iterable[Entry] | None):
        self._it = iter(entries) if entries is not None else iter(())
        self.broken: str | None = None
        self._advance()

    def _advance(self) -> None:
        try:
            self._cur = next(self._it, None)
        except (EngineError, StorageError) as exc:
            self.broken = str(exc)
            self._cur = None

    def find(self, path: bytes) -> Entry | None:
        """The previous entry for ``path``; paths must come in tree order, each once."""
        cur = self._cur
        if cur is not None and cur.path != path:
            key = path.split(b"/")
            while cur is not None and cur.path.split(b"/") < key:
                self._advance()
                cur = self._cur
            if cur is not None and cur.path != path:
                return None  # new since then
        if cur is not None:
            self._advance()  # a match is never asked for again
        return cur


class _Cancelled(Exception):
    """Raised deep in the pipeline (waiting for an upload slot) when ``cancel`` is set; the
    backup turns it into its ordinary cancelled result."""


WAIT_TICK = 0.1  # how often a wait for an upload checks ``cancel`` and reports progress
ABANDON_GRACE = 0.5  # on cancel, how long to wait for uploads in flight before leaving them


class _Uploader:
    """A tiny pool of daemon upload threads. Unlike ``ThreadPoolExecutor`` (whose threads the
    interpreter joins at exit), an upload abandoned on cancel never holds the process up; a
    pack it completes later is an ordinary unindexed pack that ``sync_packs`` reuses."""

    def __init__(self, threads: int):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._run, daemon=True, name=f"haven-upload-{i}")
            for i in range(threads)
        ]
        for t in self.threads:
            t.start()

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self.queue.put((fut, fn, args))
        return fut

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)

    def shutdown(self, *, wait: bool) -> None:
        for _ in self.threads:
            self.queue.put(None)
        if wait:
            for t in self.threads:
                t.join()


class _Packer:
    """Builds packs from sealed chunks and uploads them on a small thread pool.

    Waits for an upload (a free slot, or the last uploads at the end) check ``cancel`` and
    call ``on_wait`` (progress) every ``WAIT_TICK`` seconds, so a slow link delays neither."""

    def __init__(
        self,
        repo: Repository,
        pack_size: int,
        threads: int,
        cancel: threading.Event | None = None,
        on_wait=None,
    ):
        self.repo = repo
        self.pack_size = pack_size
        self.cancel = cancel or threading.Event()
        self.on_wait = on_wait or (lambda: None)
        self.pool = _Uploader(threads)
        self.slots = threading.BoundedSemaphore(threads)
        self.inflight: deque[tuple[Future, bytes, int, list]] = deque()
        self.unindexed: list[tuple[bytes, int, list]] = []
        self.builder: PackBuilder | None = None
        self.builder_raw = 0
        self.pack_id = b""
        self.pack_no = -1
        self.new_bytes = 0
        self.added_bytes = 0
        # Live upload counters (upload threads add under the lock): stored bytes uploaded, and
        # plain bytes of sealed packs vs. of uploaded ones (their gap is what still waits).
        self.lock = threading.Lock()
        self.uploaded_bytes = 0
        self.uploaded_raw = 0
        self.sealed_raw = 0
        self.last_index_write = time.monotonic()

    @property
    def waiting_raw(self) -> int:
        """Plain bytes in sealed packs not uploaded yet."""
        return max(self.sealed_raw - self.uploaded_raw, 0)

    def add(self, chunk_id: bytes, blob: bytes, raw_len: int) -> None:
        index = self.repo.index
        if chunk_id in index:
            return  # another worker stored it first
        if self.builder is None:
            self.builder = PackBuilder()
            self.builder_raw = 0
            self.pack_id = os.urandom(16)
            self.pack_no = index.add_pack(self.pack_id, 0)
        off, length = self.builder.add(chunk_id, blob, raw_len)
        index.add(chunk_id, self.pack_no, off, length, raw_len)
        self.new_bytes += raw_len
        self.builder_raw += raw_len
        if len(self.builder) >= self.pack_size:
            self.seal_pack()

    def seal_pack(self) -> None:
        if self.builder is None:
            return
        builder, pack_id, pack_no, raw = self.builder, self.pack_id, self.pack_no, self.builder_raw
        self.builder = None
        data = builder.finish(self.repo.sealer, pack_id)
        self.repo.index.add_pack(pack_id, len(data))
        self.sealed_raw += raw
        self._submit(pack_id, pack_no, data, raw, builder.rows)

    def add_pack(self, pack_id: bytes, data: memoryview, rows: list, release) -> int:
        """A pack a worker built in shared memory (its chunks counted in ``sealed_raw`` as
        their records arrived): index it and queue its upload; ``release()`` once it is stored
        or given up. Never waits: the workers' fixed set of pack buffers is what holds them
        back when uploads lag. Chunks another worker packed first stay in it unreferenced.
        Returns its pack number."""
        index = self.repo.index
        pack_no = index.add_pack(pack_id, len(data))
        raw = 0
        for cid, off, length, raw_len in rows:
            raw += raw_len
            if index.add(cid, pack_no, off, length, raw_len):
                self.new_bytes += raw_len
        fut = self.pool.submit(self._upload, pack_id, data, raw, release, False)
        self.inflight.append((fut, pack_id, pack_no, rows))
        self.reap(block=False)
        return pack_no

    def _submit(self, pack_id: bytes, pack_no: int, data, raw: int, rows: list) -> None:
        """Upload a pack built here, once one of ``threads`` slots is free."""
        while not self.slots.acquire(timeout=WAIT_TICK):
            if self.cancel.is_set():
                self.repo.index.mark_dead(pack_no)  # never uploaded: its chunks are absent
                self.sealed_raw -= raw
                raise _Cancelled
            self.reap(block=False)
            self.on_wait()
        fut = self.pool.submit(self._upload, pack_id, data, raw, None, True)
        self.inflight.append((fut, pack_id, pack_no, rows))
        self.reap(block=False)

    def _upload(self, pack_id: bytes, data: memoryview, raw: int, release, slot: bool) -> int:
        try:
            self.repo.store.put(pack_blob_name(pack_id), data)
            with self.lock:
                self.uploaded_bytes += len(data)
                self.uploaded_raw += raw
            return len(data)
        finally:
            if release is not None:
                release()
            if slot:
                self.slots.release()

    def reap(self, *, block: bool) -> None:
        while self.inflight and (block or self.inflight[0][0].done()):
            fut, pack_id, pack_no, rows = self.inflight[0]
            while block and not fut.done():
                futures_wait([fut], timeout=WAIT_TICK)
                if self.cancel.is_set() and not fut.done():
                    raise _Cancelled
                self.on_wait()
            self.inflight.popleft()
            try:
                size = fut.result()
            except BaseException:
                self.repo.index.mark_dead(pack_no)
                raise
            self.added_bytes += size
            self.unindexed.append((pack_id, size, rows))
        # An index delta per 8 packs or 30 s: a crash loses no more (sync_packs recovers).
        if self.unindexed and (
            len(self.unindexed) >= 8 or time.monotonic() - self.last_index_write > 30
        ):
            self.write_index()

    def write_index(self) -> None:
        if self.unindexed:
            self.repo.write_index(self.unindexed)
            self.unindexed = []
        self.last_index_write = time.monotonic()

    def close(self, *, abandon: bool = False) -> None:
        """Wait for the uploads and write the last index delta; ``abandon`` (cancel, error):
        drop the pack being filled, give uploads in flight ``ABANDON_GRACE`` seconds, leave
        the rest to finish (or not) on their own and write no index delta: every pack no index
        delta names counts as absent, and ``Repository.sync_packs`` finds the stored ones
        again."""
        if not abandon:
            try:
                self.reap(block=True)
                self.write_index()
            finally:
                self.pool.shutdown(wait=False)
            return
        if self.builder is not None:
            self.repo.index.mark_dead(self.pack_no)
            self.builder = None
        for fut, _pack_id, _pack_no, _rows in self.inflight:
            fut.cancel()  # queued, not started: never uploaded
        try:
            futures_wait([f for f, _, _, _ in self.inflight], timeout=ABANDON_GRACE)
            for fut, _pack_id, pack_no, _rows in self.inflight:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    self.added_bytes += fut.result()
                # Failed, still uploading, or stored but in no index delta: absent for now.
                # The next run's sync_packs indexes whichever of them are really stored (an
                # index delta written here could wait long behind a throttled upload).
                self.repo.index.mark_dead(pack_no)
            for pack_id, _size, _rows in self.unindexed:
                self.repo.index.mark_dead(self.repo.index.pack_no(pack_id))
            self.inflight.clear()
            self.unindexed = []
        finally:
            self.pool.shutdown(wait=False)


class _MetaWriter:
    """Entries in tree order, cut into content-defined metadata chunks (an unchanged tree
    gives the same chunks, so a no-change backup stores almost nothing)."""

    def __init__(self, repo: Repository, packer: _Packer):
        self.repo = repo
        self.packer = packer
        self.cdc = make_chunker(
            ChunkerParams(
                META_CHUNKER.min_size,
                META_CHUNKER.avg_size,
                META_CHUNKER.max_size,
                repo.keys.chunker.seed,
            )
        )
        self.cctx = zstandard.ZstdCompressor(level=3)
        self.buf = bytearray()
        self.ids: list[bytes] = []

    def add(self, entry: Entry) -> None:
        self.add_encoded(encode_entry(entry))

    def add_encoded(self, encoded: bytes) -> None:
        self.buf += encoded
        if len(self.buf) >= 4 * META_CHUNKER.max_size:
            self._cut(final=False)

    def _cut(self, *, final: bool) -> None:
        data = bytes(self.buf)
        consumed = 0
        for c in self.cdc.cut_buf(data):
            if not final and c.offset + META_CHUNKER.max_size > len(data):
                break
            piece = data[c.offset : c.offset + c.length]
            cid = self.repo.chunk_id(piece)
            if cid not in self.repo.index:
                self.packer.add(
                    cid, encode_chunk(piece, cid, self.repo.sealer, self.cctx), len(piece)
                )
            self.ids.append(cid)
            consumed = c.offset + c.length
        del self.buf[:consumed]

    def finish(self) -> list[bytes]:
        if self.buf:
            self._cut(final=True)
        return self.ids


class _Names:
    def __init__(self) -> None:
        self.users: dict[int, bytes] = {}
        self.groups: dict[int, bytes] = {}

    def user(self, uid: int) -> bytes:
        name = self.users.get(uid)
        if name is None:
            try:
                name = os.fsencode(pwd.getpwuid(uid).pw_name)
            except KeyError:
                name = b""
            self.users[uid] = name
        return name

    def group(self, gid: int) -> bytes:
        name = self.groups.get(gid)
        if name is None:
            try:
                name = os.fsencode(grp.getgrgid(gid).gr_name)
            except KeyError:
                name = b""
            self.groups[gid] = name
        return name


class _Workers:
    """Forked chunking processes, started on first use, and the shared pack buffers they fill."""

    def __init__(self, repo: Repository, count: int, level: int, pack_size: int, uploads: int):
        self.repo, self.count, self.level = repo, count, level
        self.pack_size, self.uploads = pack_size, uploads
        self.procs: list = []
        self.tasks = None
        self.results = None
        self.buffers: PackBuffers | None = None

    def start(self) -> None:
        if self.procs:
            return
        ctx = multiprocessing.get_context("fork")
        self.tasks = ctx.Queue()
        self.results = ctx.SimpleQueue()  # a pipe: a slow main process blocks the workers
        # Room for a full pack, one more chunk of the largest size and a large header.
        capacity = self.pack_size + self.repo.keys.chunker.max_size + (2 << 20)
        self.buffers = PackBuffers(ctx, self.count + self.uploads + 1, capacity)
        claims = ClaimTable(ctx)
        for wid in range(self.count):
            p = ctx.Process(
                target=worker_main,
                args=(wid, self.tasks, self.results, self.repo.keys, self.repo.index,
                      self.level, self.buffers, claims, self.pack_size),
                daemon=True,
            )  # fmt: skip
            p.start()
            self.procs.append(p)

    def get(self, timeout: float):
        if self.results._reader.poll(timeout):
            return self.results.get()
        if timeout:  # (a quick look between walked entries need not ask about the workers)
            for p in self.procs:
                if not p.is_alive() and p.exitcode not in (0, None):
                    raise EngineError(f"a backup worker process died (exit code {p.exitcode})")
        return None

    def ask_to_finish(self) -> None:
        """Each worker packs what it holds, says ``exit`` and ends (see ``worker_main``)."""
        for _ in self.procs:
            self.tasks.put(None)

    def stop(self, *, kill: bool) -> None:
        for p in self.procs:
            if kill:
                p.kill()
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        if self.tasks is not None:
            self.tasks.close()
            self.tasks.cancel_join_thread()
        if self.buffers is not None:
            self.buffers.free.close()
            self.buffers.free.cancel_join_thread()
        self.procs = []


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
) -> BackupResult:
    """Back up ``sources`` (absolute paths) into a new recovery point of ``repo``.

    ``walk``: a ``WalkAhead`` started earlier, e.g. before ``Repository.open`` so the walk
    overlaps the key derivation; its sources and exclusions are the backup's then."""
    if walk is None:
        if sources is None:
            raise InvalidArgument("no sources selected")
        walk = WalkAhead(sources, excludes)
    elif sources is not None and normalize_sources(sources) != walk.sources:
        walk.close()
        raise InvalidArgument("the sources differ from those of the walk started for them")
    try:
        job = _Backup(
            repo,
            sources=walk.sources,
            excluder=walk.excluder,
            walker=walk,
            cache_dir=Path(cache_dir) if cache_dir is not None else None,
            reporter=Reporter(sink, "backup"),
            cancel=cancel or threading.Event(),
            tags=list(tags),
            hostname=hostname or default_hostname(),
            workers=workers or max(1, min(os.cpu_count() or 1, 4)),
            level=compression_level,
            pack_size=pack_size,
            upload_threads=upload_threads,
        )
        return job.run()
    finally:
        walk.close()


class _Backup:
    def __init__(self, repo: Repository, **kw):
        self.repo = repo
        self.__dict__.update(kw)
        self.warnings: list[dict] = []
        self.pending: deque[_Pending] = deque()
        self.inflight: dict[int, _Pending] = {}
        self.links: dict[tuple[int, int], _Pending] = {}
        self.batch: list = []
        self.batch_bytes = 0
        self.batch_tick = 0
        self.tick = 0
        self.outstanding = 0
        self.seq = 0
        self.task_id = 0
        self.names = _Names()
        self.referenced: set[int] = set()
        self.unresolved: set[bytes] = set()  # referenced chunks whose pack has not arrived
        self.exited = 0
        self.result = BackupResult(status="completed", recovery_point=None)

    def warn(self, path: bytes | None, reason: str) -> None:
        self.warnings.append(self.reporter.warn(path, reason))

    def run(self) -> BackupResult:
        started = time.monotonic()
        rep = self.reporter
        rep.set_phase("scanning")
        self.repo.load_index(self.cache_dir)
        self.repo.sync_packs()
        prev = self._previous()
        if prev is not None:
            rep.files_total = prev.stats.get("files")
            rep.bytes_total = prev.stats.get("logical_bytes")
        else:
            threading.Thread(target=self._count, daemon=True, name="haven-count").start()
        self.cursor = _PrevCursor(self.repo.iter_entries(prev) if prev else None)
        self.packer = _Packer(
            self.repo, self.pack_size, self.upload_threads, self.cancel, self._upload_wait
        )
        self.meta = _MetaWriter(self.repo, self.packer)
        self.pool = _Workers(
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
            except _Cancelled:  # waiting for an upload slot (see _Packer)
                cancelled = True
            if cancelled:
                self.pool.stop(kill=True)
                self.packer.close(abandon=True)
                self.repo.save_index_cache(self.cache_dir)
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
            self.repo.save_index_cache(self.cache_dir)
            self.result.recovery_point = rp.id
            ok = True
            return self._finish(started)
        finally:
            if not ok:
                self.pool.stop(kill=True)
                # the error already propagating is the one to report, not an upload's echo of it
                with contextlib.suppress(Exception):
                    self.packer.close(abandon=True)

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
        for files, size in count_tree(self.sources, self.excluder, self.cancel.is_set):
            self.reporter.files_total, self.reporter.bytes_total = files, size

    def _previous(self) -> RecoveryPoint | None:
        rps = [
            rp
            for rp in self.repo.list_recovery_points()
            if rp.hostname == self.hostname and rp.status != "cancelled"
        ]
        return rps[-1] if rps else None

    # -- the walk --------------------------------------------------------------------------
    def _walk(self) -> bool:
        rep, cancel = self.reporter, self.cancel
        tick = 0  # (mirrored in self.tick for the batches' age)
        for path, st, problem in self.walker:
            if not tick & 63 and cancel.is_set():
                return True
            if st is None:
                self.warn(path, problem)
                continue
            prev = self.cursor.find(path)
            if not self._unchanged(st, prev):
                self._changed(path, st, prev)
            rep.current = path
            tick += 1
            self.tick = tick
            if (
                len(self.batch) >= BATCH_FILES
                or self.batch_bytes >= BATCH_BYTES
                or (self.batch and tick - self.batch_tick >= BATCH_AGE)
            ):
                self._submit()
            elif tick & 63:
                continue  # per-entry polling costs a syscall each: look at results every 64
            if self._drain(until_idle=False):
                return True
            self._flush_ready()
            rep.emit()
        return False

    def _unchanged(self, st: os.stat_result, prev: Entry | None) -> bool:
        """The item is exactly as in the previous recovery point: queue its old entry.

        Same inode, change time and modification time mean nothing was written, chmod-ed,
        chown-ed or replaced (any of those moves the ctime); size, mode and owner are compared
        too. A file counts only when every chunk it needs is still stored. Hard-linked files
        take the ordinary path (their link set is rebuilt each time)."""
        if (
            prev is None
            or prev.ctime_ns != st.st_ctime_ns
            or prev.mtime_ns != st.st_mtime_ns
            or prev.ino != st.st_ino
            or prev.mode != stat.S_IMODE(st.st_mode)
            or prev.uid != st.st_uid
            or prev.gid != st.st_gid
            or not prev.encoded
            or prev.user != (self.names.users.get(st.st_uid) or self.names.user(st.st_uid))
            or prev.group != (self.names.groups.get(st.st_gid) or self.names.group(st.st_gid))
        ):
            return False
        mode, res = st.st_mode, self.result
        kind = prev.kind
        if kind == FILE and stat.S_ISREG(mode):
            if st.st_nlink != 1 or prev.nlink != 1 or prev.size != st.st_size:
                return False
            packs = self.repo.index.packs_of(prev.content)
            if packs is None:
                return False
            self.referenced.update(packs)
            res.files += 1
            res.files_unchanged += 1
            res.logical_bytes += prev.size
            rep = self.reporter
            rep.files_done += 1
            rep.bytes_done += prev.size
        elif kind == DIR and stat.S_ISDIR(mode):
            res.dirs += 1
        elif kind == SYMLINK and stat.S_ISLNK(mode) and len(prev.target) == st.st_size:
            res.symlinks += 1  # (a link's target cannot change in place)
        else:
            return False
        self.pending.append(prev)  # an Entry itself: written back as it was read
        return True

    def _changed(self, path: bytes, st: os.stat_result, prev: Entry | None) -> None:
        """A new or changed item (or a hard link): build its entry anew."""
        mode = st.st_mode
        entry = Entry(
            path=path,
            kind=0,
            mode=stat.S_IMODE(mode),
            uid=st.st_uid,
            gid=st.st_gid,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            ino=st.st_ino,
            nlink=st.st_nlink if stat.S_ISREG(mode) else 1,
            user=self.names.user(st.st_uid),
            group=self.names.group(st.st_gid),
        )
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            entry.xattrs = self._xattrs(path)
        if stat.S_ISREG(mode):
            entry.kind = FILE
            entry.size = st.st_size
            self._file(entry, st, prev)
        elif stat.S_ISDIR(mode):
            entry.kind = DIR
            self.result.dirs += 1
            self.pending.append(_Pending(entry, True))
        elif stat.S_ISLNK(mode):
            entry.kind = SYMLINK
            try:
                entry.target = os.readlink(path)
            except OSError as exc:
                self.warn(path, f"cannot read symbolic link: {exc.strerror}")
                return
            self.result.symlinks += 1
            self.pending.append(_Pending(entry, True))
        else:
            what = (
                "socket" if stat.S_ISSOCK(mode)
                else "FIFO" if stat.S_ISFIFO(mode)
                else "device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
                else "special file"
            )  # fmt: skip
            self.warn(path, f"skipped: a {what} is not backed up")

    def _xattrs(self, path: bytes) -> list[tuple[bytes, bytes]]:
        """Extended attributes (POSIX ACLs included), sorted by name; a file system without
        them gives none, one that refuses to show them gives a warning."""
        try:
            names = os.listxattr(path, follow_symlinks=False)
            if not names:
                return []
            return sorted(
                (os.fsencode(name), os.getxattr(path, name, follow_symlinks=False))
                for name in names
            )
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT, errno.ENODATA):
                return []  # no support, or gone meanwhile (the read will say so)
            self.warn(path, f"extended attributes not backed up: {exc.strerror}")
            return []

    def _file(self, entry: Entry, st: os.stat_result, prev: Entry | None) -> None:
        rep = self.reporter
        if st.st_nlink > 1:
            first = self.links.get((st.st_dev, st.st_ino))
            if first is not None:
                entry.kind = HARDLINK
                entry.target = first.entry.path
                p = _Pending(entry, True)
                p.link_to = first
                self.pending.append(p)
                return
        self.result.files += 1
        if (
            prev is not None
            and prev.kind in (FILE, HARDLINK)
            and prev.size == entry.size
            and prev.mtime_ns == entry.mtime_ns
            and prev.ctime_ns == entry.ctime_ns
            and prev.ino == entry.ino
            and all(cid == HOLE_ID or cid in self.repo.index for cid, _ in prev.content)
        ):
            p = _Pending(entry, True)
            p.content = prev.content
            self.result.files_unchanged += 1
            rep.files_done += 1
            rep.bytes_done += entry.size
        else:
            p = _Pending(entry, False)
            self.seq += 1
            self.inflight[self.seq] = p
            if not self.batch:
                self.batch_tick = self.tick
            self.batch.append((self.seq, entry.path, entry.size, entry.mtime_ns))
            self.batch_bytes += entry.size
            self.result.files_read += 1
        if st.st_nlink > 1:
            self.links[(st.st_dev, st.st_ino)] = p
        self.pending.append(p)

    # -- workers ---------------------------------------------------------------------------
    def _submit(self) -> None:
        if not self.batch:
            return
        self.pool.start()
        self.task_id += 1
        self.pool.tasks.put((self.task_id, self.batch))
        self.outstanding += 1
        self.batch, self.batch_bytes = [], 0

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
        kind = msg[0]
        if kind == "pack":
            self._handle_pack(*msg[1:])
            return
        if kind == "exit":
            self.exited += 1
            return
        _kind, _task, files = msg
        rep, packer = self.reporter, self.packer
        for seq, records, status in files:
            p = self.inflight[seq]
            for cid, raw_len, new in records:
                if new:
                    packer.sealed_raw += raw_len  # packed by the worker, not uploaded yet
                p.content.append((cid, raw_len))
                rep.bytes_done += raw_len
            if status is not None:
                p.done = True
                del self.inflight[seq]
                rep.files_done += 1
                state, reason = status
                if state == "skip":
                    p.drop = True
                    self.result.files -= 1
                    self.warn(p.entry.path, reason)
                elif state == "warn":
                    self.warn(p.entry.path, reason)
        if kind == "done":
            self.outstanding -= 1
        packer.reap(block=False)
        self._progress()

    def _handle_pack(self, _wid: int, buf_no: int, length: int, pack_id: bytes, rows) -> None:
        buffers = self.pool.buffers
        self.packer.add_pack(
            pack_id, buffers.view(buf_no, length), rows, lambda: buffers.release(buf_no)
        )
        if self.unresolved:
            unresolved = self.unresolved
            for row in rows:
                if row[0] in unresolved:
                    unresolved.discard(row[0])
                    self._reference(row[0])
        self._progress()

    # -- entries out, in tree order ------------------------------------------------------------
    def _flush_ready(self) -> None:
        pending, meta, res = self.pending, self.meta, self.result
        same: list[bytes] = []  # unchanged items (queued as their old Entry): bytes as read
        while pending:
            p = pending[0]
            if type(p) is Entry:
                pending.popleft()
                same.append(p.encoded)  # counted and referenced when it was queued
                continue
            if not p.done:
                break
            if same:
                meta.add_encoded(b"".join(same))
                same = []
            pending.popleft()
            e = p.entry
            if p.link_to is not None:
                if p.link_to.drop:
                    self.warn(e.path, "hard link to a file that could not be read; skipped")
                    continue
                e.content = p.link_to.content
                e.size = p.link_to.entry.size
            elif p.drop:
                continue
            elif e.kind == FILE:
                e.content = p.content
                e.size = sum(n for _, n in p.content)
                res.logical_bytes += e.size
            for cid, _ in e.content:
                if cid != HOLE_ID:
                    self._reference(cid)
            meta.add(e)
        if same:
            meta.add_encoded(b"".join(same))

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
                f"backed up {res.files} files ({res.logical_bytes} bytes), "
                f"{res.new_bytes} new bytes, {len(self.warnings)} warnings"
            )
        self.reporter.finish(
            res.status,
            recovery_point=res.recovery_point,
            warnings=len(self.warnings),
            message=res.message,
        )
        return res
