"""The chunking processes (read, chunk, hash, compress, seal, pack) and the pool that runs them.

``ChunkerPool`` is the main process's handle: it forks the processes and reads their results.

Python overhead per small chunk makes threads useless here (RECIPES.md: two processes are ~2x,
two threads ~1.1x). Workers are forked so they inherit the master keys and a read-only snapshot
of the chunk index (chunks already stored are not compressed again).

Each worker seals new chunks straight into a pack buffer of its own, taken from ``PackBuffers``
(anonymous shared memory made before the fork), and hands the full pack to the main process,
which uploads it from that same memory and gives the buffer back: the stored bytes never travel
through a pipe, and its rows travel as the header stores them (``PACK_ROW``, back to back). The
worker also encodes the manifest entry of every file it reads (``run_task``): the main process
gets, per run of files, their entries as one ``bytes`` to join in tree order, and per message
only counts, warnings and the ids of the chunks it must find the packs of. Messages on the
result queue: ``("part" | "done", task, ...)`` (``run_task``), ``("pack", worker, buffer,
length, pack id, rows, plain bytes)`` and, after the stop sentinel and the last pack,
``("exit", worker)``.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import multiprocessing
import os
import queue
import stat
import struct

import zstandard
from pyfastcdc.cy import FastCDC  # the compiled chunker: never the 100x slower pure-Python one

from agents.runtime.engine.crypto import ChunkerParams, MasterKeys, Sealer, chunk_hasher
from agents.runtime.engine.errors import EngineError
from agents.runtime.engine.forked import die_with_parent
from agents.runtime.engine.format import (
    FILE,
    HOLE_ID,
    PACK_ROW,
    chunk_ad,
    chunk_payload,
    encode_fields,
    pack_tail,
    pack_tail_size,
    sealed_size,
)
from agents.runtime.engine.index import ChunkIndex
from agents.runtime.engine.owners import OwnerNames
from agents.runtime.engine.repository import Repository
from agents.runtime.engine.scan import read_xattrs

FLUSH_BYTES = 2 << 20  # send file records at least every 2 MiB read (progress granularity)
SPARSE_MIN = 1 << 20
REPLACED = "was replaced by something that is not a regular file"

_O_NOATIME = getattr(os, "O_NOATIME", 0)
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)


def make_chunker(params: ChunkerParams) -> FastCDC:
    return FastCDC(
        params.avg_size, min_size=params.min_size, max_size=params.max_size, seed=params.seed
    )


class PackBuffers:
    """Pack-sized buffers in one anonymous shared mapping, made before the workers fork.

    A worker fills a buffer and sends its number; the main process uploads from the same
    memory, then ``release`` frees the pages (``MADV_REMOVE``) and returns the number to the
    free queue. As many buffers as workers + uploads + 1: a worker waits for one when the
    uploads lag, which bounds memory whatever the data size."""

    def __init__(self, ctx, count: int, capacity: int):
        page = mmap.PAGESIZE
        self.count = count
        self.size = -(-capacity // page) * page
        self.map = mmap.mmap(-1, count * self.size)  # MAP_SHARED | MAP_ANONYMOUS
        self.free = ctx.Queue()
        for no in range(count):
            self.free.put(no)

    def view(self, no: int, length: int | None = None) -> memoryview:
        start = no * self.size
        return memoryview(self.map)[start : start + (self.size if length is None else length)]

    def release(self, no: int) -> None:
        self.map.madvise(mmap.MADV_REMOVE, no * self.size, self.size)
        with contextlib.suppress(ValueError):  # closed: the workers are gone, none will need it
            self.free.put(no)


class ClaimTable:
    """Which new chunks some worker has already taken on in this run, shared by all workers
    (an open-addressing table of 16-byte id prefixes in anonymous shared memory, under one
    lock), so a chunk two workers meet, or one worker meets twice, is compressed and stored
    once; it is the workers' only memory of the run's new chunks (16 MiB for ~730,000 of
    them, no per-chunk Python object). When the table is 70% full ``claim`` answers None and
    each worker falls back to a set of the ids it packed itself (a chunk may then be stored
    twice: space, never correctness). A wrong "already claimed"
    would need two ids sharing 128 bits, and the backup checks at its end that every chunk it
    references was packed."""

    SLOT = 16

    def __init__(self, ctx, slots: int = 1 << 20):
        self.mask = slots - 1
        self.limit = int(slots * 0.7)
        self.map = mmap.mmap(-1, slots * self.SLOT + 8)
        self.count_at = slots * self.SLOT
        self.lock = ctx.Lock()

    def claim(self, chunk_id: bytes) -> bool | None:
        """True: this caller packs it; False: another worker does; None: table full."""
        key = chunk_id[:16]
        if key == _EMPTY_SLOT:
            return None
        m, size = self.map, self.SLOT
        h = int.from_bytes(chunk_id[16:24], "little") & self.mask
        self.lock.acquire()  # (not ``with``: its ``__enter__`` is Python, once per chunk)
        try:
            while True:
                o = h * size
                cur = m[o : o + size]
                if cur == key:
                    return False
                if cur == _EMPTY_SLOT:
                    (count,) = _COUNT.unpack_from(m, self.count_at)
                    if count >= self.limit:
                        return None
                    m[o : o + size] = key
                    _COUNT.pack_into(m, self.count_at, count + 1)
                    return True
                h = (h + 1) & self.mask
        finally:
            self.lock.release()


_EMPTY_SLOT = bytes(ClaimTable.SLOT)
_COUNT = struct.Struct("<Q")


class PackWriter:
    """Packs one worker's new chunks into shared buffers; a full pack goes to the main process."""

    def __init__(self, wid: int, buffers: PackBuffers, result_q, sealer: Sealer, pack_size: int):
        self.wid = wid
        self.buffers = buffers
        self.result_q = result_q
        self.sealer = sealer
        self.pack_size = pack_size  # (the buffer holds a full pack and one more chunk)
        self.no: int | None = None
        self.view = memoryview(b"")
        self.used = 0
        self.rows = bytearray()  # the header: PACK_ROW rows back to back
        self.count = 0
        self.raw = 0
        self.parent = os.getppid()
        self.sent = 0  # packs sent so far: the file records are sent right after each

    def add(self, chunk_id: bytes, payload: memoryview, raw_len: int) -> None:
        need = sealed_size(len(payload))
        if self.count and self.used + need + pack_tail_size(self.count + 1) > len(self.view):
            self.flush()
        if self.no is None:
            self._take()
        n = self.sealer.seal_into(
            payload, chunk_ad(chunk_id), self.view[self.used : self.used + need]
        )
        self.rows += PACK_ROW.pack(chunk_id, self.used, n, raw_len)
        self.count += 1
        self.raw += raw_len
        self.used += n
        if self.used >= self.pack_size:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        pack_id = os.urandom(16)
        rows = bytes(self.rows)
        tail = pack_tail(rows, self.sealer, pack_id)
        self.view[self.used : self.used + len(tail)] = tail
        length = self.used + len(tail)
        self.result_q.put(("pack", self.wid, self.no, length, pack_id, rows, self.raw))
        self.sent += 1
        self.no, self.view, self.used = None, memoryview(b""), 0
        self.rows, self.count, self.raw = bytearray(), 0, 0

    def _take(self) -> None:
        while True:
            try:
                self.no = self.buffers.free.get(timeout=1.0)
                break
            except queue.Empty:
                if os.getppid() != self.parent:
                    raise SystemExit(1) from None
        self.view = self.buffers.view(self.no)


def worker_main(
    wid: int,
    task_q,
    result_q,
    keys: MasterKeys,
    index: ChunkIndex,
    level: int,
    buffers: PackBuffers,
    claims: ClaimTable,
    pack_size: int,
) -> None:
    die_with_parent()
    parent = os.getppid()
    writer = PackWriter(wid, buffers, result_q, Sealer(keys.data_key), pack_size)
    proc = FileProcessor(keys, index, level, writer, claims)
    names = OwnerNames()
    while True:
        try:
            task = task_q.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            writer.flush()
            result_q.put(("exit", wid))
            return
        run_task(task, proc, names, result_q)


def run_task(task, proc: FileProcessor, names: OwnerNames, result_q) -> None:
    """Read the files of one task and send what the main process needs of them.

    A task is ``(task id, runs, encode)``: each run a list of files that follow one another
    in tree order, each ``(stored path, size, mtime_ns)`` as the walk saw it, or its stored
    path alone (``bytes``: a regular file the walk did not lstat; it pickles in less than
    a tuple), or
    ``(stored path, size, mtime_ns, disk path, nlink, key)`` for a file read from elsewhere
    (a mapped folder) or one of a hard-link set (``key``: the main process's name for it).
    With ``encode``, each file's whole manifest entry is encoded here (``format.
    encode_fields``, its fields from the ``fstat`` of the open file) and each run's entries
    come back as one ``bytes``: the main process only joins them in tree order.

    Messages: ``("part", task, read, new_raw, refs, files, warnings)`` while the task runs
    (every ``FLUSH_BYTES`` read and after each pack sent) and ``("done", task, read, new_raw,
    refs, files, warnings, blobs, links, logical, skipped)`` at its end, each with the counts
    since the previous message: plain bytes read, plain bytes of the chunks this worker
    packed, the ids of the other chunks (stored before, or packed by another worker: the
    main process references their packs), files finished, and ``(path, reason)`` warnings.
    ``blobs``: one per run, or, in a run with files of hard-link sets the walk did not lstat,
    a list of the entries' bytes between each such file's ``(path, fstat, size, content,
    xattrs)``, read but not encoded (the main process knows the sets); ``links``: ``(key, content, size, dropped)`` of each file of a
    hard-link set; ``logical``: the sizes of the files stored; ``skipped``: files not stored.
    """
    task_id, runs, encode = task
    writer = proc.writer
    read = new_raw = files = logical = skipped = pending = 0
    refs: list[bytes] = []
    warnings: list[tuple[bytes, str]] = []
    blobs: list[bytes | list] = []
    links: list = []
    sent = writer.sent
    user, group = names.user, names.group
    for jobs in runs:
        parts: list[bytes] = []
        handed: list = []  # the run's entries so far and the files handed back, in order
        for job in jobs:
            if type(job) is bytes:  # a file the walk did not lstat, by its path alone
                path = disk = job
                scan_size = scan_mtime = -1
                nlink, key = 1, None
            else:
                path, scan_size, scan_mtime = job[0], job[1], job[2]
                if len(job) == 3:
                    disk, nlink, key = path, 1, None
                else:
                    disk, nlink, key = job[3], job[4], job[5]
            content: list[tuple[bytes, int]] = []
            status = None
            for records, status in proc.process(disk, scan_size, scan_mtime):
                for cid, n, new in records:
                    content.append((cid, n))
                    read += n
                    pending += n
                    if new:
                        new_raw += n
                    elif cid != HOLE_ID:
                        refs.append(cid)
                if status is None and (pending >= FLUSH_BYTES or writer.sent != sent):
                    result_q.put(("part", task_id, read, new_raw, refs, files, warnings))
                    read = new_raw = files = pending = 0
                    refs, warnings, sent = [], [], writer.sent
            assert status is not None
            state, reason, xattrs, xattr_problem, st, size = status
            files += 1
            if xattr_problem:
                warnings.append((path, xattr_problem))
            if state == "skip":
                warnings.append((path, reason))
                skipped += 1
                if key is not None:
                    links.append((key, None, 0, True))
                continue
            if state == "warn":
                warnings.append((path, reason))
            if encode and st.st_nlink > 1 and scan_size < 0:
                # One of a hard-link set that the walk did not lstat: the main process makes
                # it the set's file or a link to it, in tree order (``_Backup._linked``).
                handed.append(b"".join(parts))
                handed.append((path, st, size, content, xattrs))
                parts = []
                continue
            logical += size
            if key is not None:
                links.append((key, content, size, False))
            if encode:
                uid, gid = st.st_uid, st.st_gid
                parts.append(
                    encode_fields(
                        FILE, st.st_mode & 0o7777, uid, gid, nlink, st.st_mtime_ns,
                        st.st_ctime_ns, st.st_ino, size, names.users.get(uid) or user(uid),
                        names.groups.get(gid) or group(gid), path, b"", content, xattrs,
                    )
                )  # fmt: skip
        if handed:
            handed.append(b"".join(parts))
            blobs.append(handed)
        else:
            blobs.append(b"".join(parts))
        if pending >= FLUSH_BYTES or writer.sent != sent:
            result_q.put(("part", task_id, read, new_raw, refs, files, warnings))
            read = new_raw = files = pending = 0
            refs, warnings, sent = [], [], writer.sent
    proc.end_task()
    result_q.put(
        ("done", task_id, read, new_raw, refs, files, warnings, blobs, links, logical, skipped)
    )


def _outcome(
    after: os.stat_result, scan_size: int, scan_mtime: int,
    st: os.stat_result, size: int, xattrs: list, xattr_problem: str | None,
) -> tuple:  # fmt: skip
    """The status of a file read whole: ``st`` is its fstat before the read, ``after`` the
    one after it, ``size`` the bytes stored. A file whose modification time or size moved
    from what the walk (or the first fstat) saw was stored as read, with a warning."""
    if after.st_mtime_ns != scan_mtime or size != scan_size or after.st_size != size:
        return ("warn", "changed while it was being read; stored as read", xattrs,
                xattr_problem, st, size)  # fmt: skip
    return ("ok", None, xattrs, xattr_problem, st, size)


class FileProcessor:
    def __init__(
        self,
        keys: MasterKeys,
        index: ChunkIndex,
        level: int,
        writer: PackWriter,
        claims: ClaimTable,
    ):
        self.params = keys.chunker
        self.cdc = make_chunker(keys.chunker)
        self.writer = writer
        self.claims = claims
        self.scratch = bytearray(self.params.max_size + 1)
        self.hash = chunk_hasher(keys.id_key)
        self.cctx = zstandard.ZstdCompressor(level=level) if level > 0 else None
        # (read-only here: a first backup's is empty, and each chunk skips the look-up)
        self.index = index if len(index) else None
        self.seen: set[bytes] = set()
        self.buf = bytearray(max(2 * self.params.max_size, 8 << 20))
        self.mv = memoryview(self.buf)
        self.small = self.params.min_size
        self.small_iov = [self.mv[: self.small]]
        self._dir: bytes | None = None  # the folder of the file opened last (``_open``)
        self._dir_fd: int | None = None

    def process(self, path: bytes, scan_size: int, scan_mtime: int):
        """The file's (records, status) pieces (``scan_size`` -1: a file the walk did not
        lstat): a list of one piece for a file read whole (every small file) or not read,
        else a generator of them, which holds the open file until it is run to its end or
        closed (a caller must do one or the other). Status is None until the last piece,
        then ``(state, reason, xattrs, xattr warning, fstat, size)``: state ``"ok"``,
        ``"warn"`` (stored, but read while changing) or ``"skip"`` (not stored: nothing else
        is set); ``fstat`` is the open file's before the read, ``size`` the bytes stored
        (holes included)."""
        try:
            fd = self._open(path)
        except FileNotFoundError:
            return [([], ("skip", "vanished before it could be read", None, None, None, 0))]
        except PermissionError:
            return [([], ("skip", "permission denied", None, None, None, 0))]
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # (O_NOFOLLOW) a symbolic link now
                return [([], ("skip", REPLACED, None, None, None, 0))]
            return [([], ("skip", f"cannot open: {exc.strerror}", None, None, None, 0))]
        handed = False  # to ``_pieces``, which closes it
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return [([], ("skip", REPLACED, None, None, None, 0))]
            if scan_size < 0:  # not lstat'ed by the walk: changes are measured from here
                scan_size, scan_mtime = st.st_size, st.st_mtime_ns
            xattrs, xattr_problem = read_xattrs(fd)
            if st.st_size < self.small:
                # At most one chunk (no content-defined cut falls before ``min_size``): one
                # read, no chunker. A file that grew meanwhile takes the general path.
                n = os.preadv(fd, self.small_iov, 0)
                if n == st.st_size:
                    records = [self._chunk(self.mv[:n])] if n else []
                    after = os.fstat(fd)
                    status = _outcome(after, scan_size, scan_mtime, st, n, xattrs, xattr_problem)
                    return [(records, status)]
            pieces = self._pieces(fd, st, scan_size, scan_mtime, xattrs, xattr_problem)
            handed = True
            return pieces
        except OSError as exc:
            return [([], ("skip", f"read error: {exc.strerror}", None, None, None, 0))]
        finally:
            if not handed:
                os.close(fd)

    def _pieces(self, fd, st, scan_size, scan_mtime, xattrs, xattr_problem):
        """``process`` of a file read in pieces (it owns ``fd`` and closes it)."""
        try:
            records: list[tuple[bytes, int, bool]] = []
            total = pending = 0
            for start, end in self._regions(fd, st):
                if start > total:
                    records.append((HOLE_ID, start - total, False))
                    total = start
                sent = self.writer.sent
                for rec in self._chunks(fd, start, end):
                    records.append(rec)
                    total += rec[1]
                    pending += rec[1]
                    if pending >= FLUSH_BYTES or self.writer.sent != sent:
                        yield records, None
                        records, pending, sent = [], 0, self.writer.sent
            end_size = os.fstat(fd).st_size
            if end_size > total and st.st_blocks * 512 < end_size:
                records.append((HOLE_ID, end_size - total, False))  # trailing hole
                total = end_size
            after = os.fstat(fd)
            yield records, _outcome(after, scan_size, scan_mtime, st, total, xattrs, xattr_problem)
        except OSError as exc:
            yield [], ("skip", f"read error: {exc.strerror}", None, None, None, 0)
        finally:
            os.close(fd)

    def _chunk(self, data: memoryview) -> tuple[bytes, int, bool]:
        """One chunk's record; a new one is compressed, sealed and packed."""
        cid = self.hash(data)
        if self.index is not None and cid in self.index:
            return cid, len(data), False
        claimed = self.claims.claim(cid)
        if claimed is False:
            return cid, len(data), False  # this worker or another packs it
        if claimed is None:  # the claim table is full: this worker's own memory decides
            if cid in self.seen:
                return cid, len(data), False
            self.seen.add(cid)
        self.writer.add(cid, chunk_payload(data, self.cctx, self.scratch), len(data))
        return cid, len(data), True

    def _open(self, path: bytes) -> int:
        """The file, opened by its name in its folder's descriptor (``_folder``): a task's
        files come folder by folder, and the kernel then looks up one name, not every
        component of a deep path, for each of them."""
        head, _, name = path.rpartition(b"/")
        dir_fd = self._folder(head) if head and name else None
        if dir_fd is None:
            name = path
        if _O_NOATIME:
            try:
                return os.open(name, _OPEN_FLAGS | _O_NOATIME, dir_fd=dir_fd)
            except PermissionError as exc:
                if exc.errno != errno.EPERM:  # O_NOATIME needs ownership; retry without
                    raise
        return os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)

    def _folder(self, folder: bytes) -> int | None:
        """A descriptor of ``folder`` (``O_PATH``: search permission is all a path needs
        too), kept while the files asked for are in it and until the task ends
        (``end_task``), so a folder renamed or replaced meanwhile is looked up afresh by
        the next task; None when it cannot be opened (the path is opened whole, and
        says why)."""
        if folder == self._dir:
            return self._dir_fd
        self.end_task()
        try:
            self._dir_fd = os.open(folder, _DIR_FLAGS)
        except OSError:
            return None
        self._dir = folder
        return self._dir_fd

    def end_task(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
        self._dir, self._dir_fd = None, None

    def _regions(self, fd: int, st: os.stat_result):
        """Data regions; holes of sparse files are found with SEEK_DATA/SEEK_HOLE."""
        if st.st_size < SPARSE_MIN or st.st_blocks * 512 >= st.st_size:
            yield 0, None
            return
        pos = 0
        while True:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole from here on
                    return
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, end
            pos = end

    def _chunks(self, fd: int, start: int, end: int | None):
        """Content-defined chunks of [start, end) (to EOF when ``end`` is None)."""
        buf = self.buf
        mv = memoryview(buf)
        max_size = self.params.max_size
        pos, carry = start, 0
        while True:
            room = len(buf) - carry
            if end is not None:
                room = min(room, end - pos)
            n = os.preadv(fd, [mv[carry : carry + room]], pos) if room > 0 else 0
            pos += n
            fill = carry + n
            eof = n == 0 or (end is not None and pos >= end)
            if fill == 0:
                return
            consumed = 0
            for c in self.cdc.cut_buf(mv[:fill]):
                if not eof and c.offset + max_size > fill:
                    break  # not enough look-ahead for a content-defined cut
                consumed = c.offset + c.length
                yield self._chunk(mv[c.offset : consumed])
            if eof:
                return
            carry = fill - consumed
            buf[:carry] = buf[consumed:fill]


class ChunkerPool:
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
