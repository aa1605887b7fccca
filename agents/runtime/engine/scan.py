"""Walking the selected files: tree order, exclusions, and the warnings a walk can raise.

Paths are bytes (``os.fsencode``): Linux names may hold newlines or invalid UTF-8. The walk
yields entries in *tree order* — depth first, children sorted by name bytes — which is also
the order of ``path.split(b"/")`` lists, so a recovery point can be merge-joined with the
previous one while streaming.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import marshal
import multiprocessing
import os
import pickle
import queue
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import cast

from agents.runtime.engine.errors import EngineError, InvalidArgument
from agents.runtime.engine.forked import SharedFlag, die_with_parent
from agents.runtime.engine.paths import PathMap, absolute_paths, is_selected

Warn = Callable[[bytes, str], None]


XATTR_ABSENT = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT, errno.ENODATA)


def read_xattrs(target: bytes | int) -> tuple[list[tuple[bytes, bytes]], str | None]:
    """Extended attributes (POSIX ACLs included) of a path (not followed) or an open file
    descriptor, sorted by name, and a warning when the file system refuses to show them (a
    file system without them gives none and no warning)."""
    try:
        if isinstance(target, int):
            names = os.listxattr(target)
            if not names:
                return [], None
            return sorted((os.fsencode(n), os.getxattr(target, n)) for n in names), None
        names = os.listxattr(target, follow_symlinks=False)
        if not names:
            return [], None
        return sorted(
            (os.fsencode(n), os.getxattr(target, n, follow_symlinks=False)) for n in names
        ), None
    except OSError as exc:
        if exc.errno in XATTR_ABSENT:
            return [], None  # no support, or gone meanwhile (the read will say so)
        return [], f"extended attributes not backed up: {exc.strerror}"


class Excluder:
    """Exclusion rules.

    * ``.ext`` or ``*.ext`` — a file type by extension (case-insensitive for ``.ext``)
    * a glob without ``/`` — matched against the name alone (``__pycache__``, ``*.tmp``)
    * a glob with ``/`` — matched against the whole absolute path (``/home/*/.cache``);
      ``*`` may cross ``/`` here
    """

    def __init__(self, patterns: Iterable[str]):
        name_res, path_res = [], []
        self.extensions: tuple[bytes, ...] = ()
        exts = []
        for pat in patterns:
            if not pat:
                continue
            if pat.startswith(".") and not any(c in pat for c in "*?[/"):
                exts.append(os.fsencode(pat.lower()))
                continue
            rx = os.fsencode(fnmatch.translate(pat))
            (path_res if "/" in pat else name_res).append(rx)
        self.extensions = tuple(exts)
        self._name = re.compile(b"|".join(name_res)) if name_res else None
        self._path = re.compile(b"|".join(path_res)) if path_res else None
        self.active = bool(exts or name_res or path_res)  # False: nothing is ever excluded

    def __call__(self, path: bytes, name: bytes) -> bool:
        if self.extensions and name.lower().endswith(self.extensions):
            return True
        if self._name is not None and self._name.match(name):
            return True
        return self._path is not None and self._path.match(path) is not None


def normalize_sources(sources: Iterable[str | bytes | os.PathLike]) -> list[bytes]:
    """The sources normalised, in tree order, without those inside another one."""
    out = sorted(set(absolute_paths(sources, what="source")), key=lambda p: p.split(b"/"))
    kept: list[bytes] = []
    for p in out:
        if is_selected(p, kept):
            continue  # inside an earlier source
        kept.append(p)
    if not kept:
        raise InvalidArgument("no sources selected")
    return kept


def join(parent: bytes, name: bytes) -> bytes:
    return parent + name if parent.endswith(b"/") else parent + b"/" + name


# Kernel and virtual file systems: their folders are backed up (so /proc exists after a
# restore of /), never what is in them (process state, devices, control files).
PSEUDO_FS = frozenset(
    b"proc sysfs devtmpfs devpts cgroup cgroup2 debugfs tracefs securityfs pstore bpf "
    b"configfs fusectl mqueue hugetlbfs binfmt_misc autofs efivarfs rpc_pipefs nsfs "
    b"selinuxfs".split()
)


def pseudo_devices(mountinfo: bytes | None = None) -> frozenset[int]:
    """Device numbers of the mounted kernel/virtual file systems (``/proc/self/mountinfo``)."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", "rb") as f:
                mountinfo = f.read()
        except OSError:
            return frozenset()
    devs = set()
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(b" - ")
        parts = fields.split()
        if not sep or len(parts) < 3 or not rest:
            continue
        if rest.split()[0] in PSEUDO_FS:
            major, _, minor = parts[2].partition(b":")
            try:
                devs.add(os.makedev(int(major), int(minor)))
            except ValueError:
                continue
    return frozenset(devs)


def walk(
    sources: list[bytes],
    exclude: Excluder,
    warn: Warn,
    skip_file_lstat: threading.Event | SharedFlag | None = None,
    *,
    runs: bool = False,
) -> Iterator[tuple[bytes | list[bytes], os.stat_result | None]]:
    """(path, lstat) for every selected item and the ancestors of each source, in tree order.

    Folders on kernel/virtual file systems (``PSEUDO_FS``: /proc, /sys, /dev …) are yielded
    but not entered. Once ``skip_file_lstat`` is set, each folder listed from then on is read
    with ``scandir`` and its regular files (by the listing's ``d_type``) are yielded as
    ``(path, None)``, not ``lstat``'ed: a first backup takes their metadata from the ``fstat``
    of the file it opens to read. With ``runs``, such files that follow one another in a
    folder come as one ``(list of paths, None)``: the walk's process takes a folder's files
    in one step, not one generator step each."""
    pseudo = pseudo_devices()
    emitted_ancestors: set[bytes] = set()
    for src in sources:
        parts = src.split(b"/")
        for i in range(1, len(parts)):
            anc = b"/".join(parts[:i]) or b"/"
            if anc in emitted_ancestors:
                continue
            emitted_ancestors.add(anc)
            try:
                yield anc, os.lstat(anc)
            except OSError as exc:
                warn(anc, f"cannot read folder metadata: {exc.strerror}")
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            warn(src, "selected item does not exist")
            continue
        except OSError as exc:
            warn(src, f"cannot read: {exc.strerror}")
            continue
        yield from _walk_tree(src, st, exclude, warn, pseudo, skip_file_lstat, runs=runs)


def walk_mapped(mapping: PathMap, warn: Warn) -> Iterator[tuple[bytes, os.stat_result]]:
    """(stored path, lstat) for everything in the mapped folders, after the disk paths in
    tree order (a stored prefix is relative). No exclusions apply: the folder is staged."""
    pseudo = pseudo_devices()
    for prefix, folder in mapping.items():

        def stored_warn(path: bytes, reason: str, prefix=prefix) -> None:
            warn(mapping.stored(prefix, path), reason)

        try:
            st = os.lstat(folder)
        except OSError as exc:
            warn(prefix, f"cannot read the staged folder {os.fsdecode(folder)}: {exc.strerror}")
            continue
        if not stat.S_ISDIR(st.st_mode):
            warn(prefix, f"the staged folder {os.fsdecode(folder)} is not a folder")
            continue
        for path, pst in _walk_tree(folder, st, Excluder(()), stored_warn, pseudo):
            yield mapping.stored(prefix, path), pst


def _listdir(path: bytes, warn: Warn) -> list[bytes]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        warn(path, "folder vanished while it was being read")
    except OSError as exc:
        warn(path, f"cannot list folder: {exc.strerror}")
    return []


def _list_typed(path: bytes, warn: Warn) -> tuple[list[bytes], set[bytes]]:
    """A folder's names, sorted, and which of them are regular files (``d_type``: no
    ``lstat``, unless the file system leaves the type unknown)."""
    names: list[bytes] = []
    regular: set[bytes] = set()
    try:
        with os.scandir(path) as it:
            for e in it:
                names.append(e.name)
                if e.is_file(follow_symlinks=False):
                    regular.add(e.name)
    except FileNotFoundError:
        warn(path, "folder vanished while it was being read")
    except OSError as exc:
        warn(path, f"cannot list folder: {exc.strerror}")
    names.sort()
    return names, regular


def _file_runs(
    prefix: bytes, names: list[bytes], regular: set[bytes], exclude: Excluder | None
) -> list[bytes | list[bytes]]:
    """A folder's sorted ``names`` with each stretch of regular files that follow one
    another replaced by one list of their paths (``prefix`` + name), excluded names left
    out: what ``_walk_tree`` yields with ``runs``."""
    out: list[bytes | list[bytes]] = []
    run: list[bytes] = []
    for name in names:
        if exclude is not None and exclude(prefix + name, name):
            continue
        if name in regular:
            run.append(prefix + name)
            continue
        if run:
            out.append(run)
            run = []
        out.append(name)
    if run:
        out.append(run)
    return out


def _walk_tree(
    root: bytes,
    st: os.stat_result,
    exclude: Excluder,
    warn: Warn,
    pseudo: frozenset[int],
    skip_file_lstat: threading.Event | SharedFlag | None = None,
    *,
    runs: bool = False,
):
    yield root, st
    if not stat.S_ISDIR(st.st_mode) or st.st_dev in pseudo:
        return
    lstat, isdir = os.lstat, stat.S_ISDIR
    rules = exclude.active

    def listing(prefix: bytes) -> tuple[Iterator[bytes | list[bytes]], set[bytes] | None]:
        path = prefix[:-1] if len(prefix) > 1 else prefix
        if skip_file_lstat is not None and skip_file_lstat.is_set():
            names, regular = _list_typed(path, warn)
            if runs:
                return iter(_file_runs(prefix, names, regular, exclude if rules else None)), None
            return iter(names), regular
        return iter(_listdir(path, warn)), None

    top = join(root, b"")
    stack = [(top, *listing(top))]
    while stack:
        prefix, names, regular = stack[-1]
        for name in names:
            if isinstance(name, list):  # (``runs``) regular files, their paths made already
                yield name, None
                continue
            path = prefix + name
            if rules and exclude(path, name):
                continue
            if regular is not None and name in regular:
                yield path, None  # a regular file, not lstat'ed (see ``walk``)
                continue
            try:
                st = lstat(path)
            except FileNotFoundError:
                warn(path, "vanished before it could be backed up")
                continue
            except OSError as exc:
                warn(path, f"cannot read metadata: {exc.strerror}")
                continue
            yield path, st
            if isdir(st.st_mode) and st.st_dev not in pseudo:
                stack.append((path + b"/", *listing(path + b"/")))
                break  # its contents first (tree order), then the rest of this folder
        else:
            stack.pop()


class WalkStat(tuple[int, int, int, int, int, int, int, int, int]):
    """The fields of an item's ``lstat`` that a backup reads, in this order, and under
    ``os.stat_result``'s names. The walk's process sends them as a plain tuple (``marshal``
    writes and reads that in C, ~0.3 µs an item; an ``os.stat_result`` or an instance of
    this class goes through ``pickle``'s Python-level reduce, ~2 µs): the backup unpacks
    the tuple where it compares, and wraps it in this class where it reads fields by name."""

    __slots__ = ()

    st_mode: int = cast(int, property(itemgetter(0)))
    st_ino: int = cast(int, property(itemgetter(1)))
    st_dev: int = cast(int, property(itemgetter(2)))
    st_nlink: int = cast(int, property(itemgetter(3)))
    st_uid: int = cast(int, property(itemgetter(4)))
    st_gid: int = cast(int, property(itemgetter(5)))
    st_size: int = cast(int, property(itemgetter(6)))
    st_mtime_ns: int = cast(int, property(itemgetter(7)))
    st_ctime_ns: int = cast(int, property(itemgetter(8)))

    @staticmethod
    def fields(st: os.stat_result) -> tuple[int, int, int, int, int, int, int, int, int]:
        return (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
                st.st_size, st.st_mtime_ns, st.st_ctime_ns)  # fmt: skip

    @classmethod
    def of(cls, st: os.stat_result) -> WalkStat:
        return cls(cls.fields(st))


_BATCH, _RAISED = (
    b"B",
    b"E",
)  # a message of the walk's process: a marshalled batch, or pickled exception


def _walk_main(sources: list[bytes], exclude: Excluder, skip, conn, batch: int) -> None:
    """The walk's process: ``walk`` of ``sources``, sent in batches of ``(path, WalkStat's
    fields | None, warning)`` (``_BATCH`` + ``marshal``), a run of files not ``lstat``'ed as
    ``(list of paths, None, None)``, then ``b""``; an exception raised by the walk is sent
    pickled (``_RAISED`` + ``pickle``) in place of a batch. A batch ends once it holds
    ``batch`` paths (or a folder's run more)."""
    die_with_parent()
    items: list = []
    dumps, fields = marshal.dumps, WalkStat.fields

    def warn(path: bytes, reason: str) -> None:
        items.append((path, None, reason))

    try:
        try:
            paths = 0
            for path, st in walk(sources, exclude, warn, skip, runs=True):
                if type(path) is list:  # a folder's regular files, not lstat'ed: one item
                    items.append((path, None, None))
                    paths += len(path)
                else:
                    items.append((path, None if st is None else fields(st), None))
                    paths += 1
                if paths >= batch or len(items) >= batch:
                    conn.send_bytes(_BATCH + dumps(items))
                    items.clear()
                    paths = 0
            if items:
                conn.send_bytes(_BATCH + dumps(items))
            conn.send_bytes(b"")
        except BrokenPipeError:  # the backup ended first
            pass
        except BaseException as exc:
            try:
                data = pickle.dumps(exc)
            except Exception:  # (an exception that does not pickle: its words)
                data = pickle.dumps(EngineError(f"the walk failed: {exc}"))
            with contextlib.suppress(OSError):
                conn.send_bytes(_RAISED + data)
    finally:
        conn.close()


class WalkAhead:
    """``walk`` in a forked process of its own, running ahead of its reader in batches.

    In a process, its ``lstat`` and ``listdir`` calls and the Python around them run on a
    core of their own beside the reader's work (reading the previous recovery point,
    comparing entries), and beside the key derivation when it starts before the repository
    is opened. On a thread of the reader's process they could not: each system call gives
    the GIL up and waits to take it back, so the walk and the reader took turns on one core
    (a no-change backup used one core's worth of CPU for exactly its wall time). A thread of
    this process relays the batches as the bytes they came in (the reader unpickles them),
    then walks the staged folders, if any. Memory is bounded (at most ``depth`` batches
    wait, besides the pipe's buffer). Iterating yields ``(path, lstat, None)`` for each item
    (``lstat``: the fields of a ``WalkStat``, a plain tuple), ``(path, None, reason)``
    for each warning, and ``(list of paths, None, None)`` for regular files of one folder,
    next to one another, that the walk did not ``lstat`` (below), in walk order.

    ``skip_file_lstat`` (a flag the process shares, set by a first backup once it knows it
    is one, or from the start with ``lstat_files=False``): from then on the walk yields
    regular files without ``lstat``, a folder's run of them as one item (``walk`` with
    ``runs``: a step per folder, not per file, here and in the reader); an incremental
    backup never sets it (it compares each file's ``lstat`` with the previous point), and
    ``lstat``'s any such item it is given.

    ``mapped`` (stored prefix -> disk folder, ``PathMap``) adds staged folders after the
    sources, under their stored paths; ``mapping.disk`` says where each is read from.
    ``mapped_ready()``, when given, is called on the relaying thread before the staged
    folders are walked (it may wait for them to be filled, while the sources are walked and
    read) and returns warnings (``{"path", "reason"}``) to report in walk order."""

    BATCH = 512

    def __init__(self, sources: Iterable[str | bytes | os.PathLike], excludes: Iterable[str] = (),
                 *, depth: int = 32, mapped: dict | None = None,
                 mapped_ready: Callable[[], Iterable[dict]] | None = None,
                 lstat_files: bool = True):  # fmt: skip
        self.sources = normalize_sources(sources)
        ctx = multiprocessing.get_context("fork")
        self.skip_file_lstat = SharedFlag(ctx)
        if not lstat_files:
            self.skip_file_lstat.set()
        self.mapping = PathMap(mapped)
        self._mapped_ready = mapped_ready
        self.excluder = Excluder(excludes)
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._reading = True  # the relaying thread reads the pipe (``_run``)
        self._proc = ctx.Process(
            target=_walk_main,
            args=(self.sources, self.excluder, self.skip_file_lstat, send, self.BATCH),
            daemon=True,
            name="haven-walk",
        )
        self._proc.start()
        send.close()
        self._thread = threading.Thread(target=self._run, daemon=True, name="haven-walk")
        self._thread.start()

    def _run(self) -> None:
        batch: list = []

        def warn(path: bytes, reason: str) -> None:
            batch.append((path, None, reason))

        try:
            recv = self._recv.recv_bytes
            while True:
                try:
                    data = recv()
                except EOFError:
                    if not self._stop.is_set():
                        self._put(EngineError("the walk's process ended before the walk did"))
                    return
                if not data:
                    break
                if not self._put(data):
                    return
            self._reading = False
            fields = WalkStat.fields
            for path, st in self._walk_mapped(warn):
                batch.append((path, fields(st), None))
                if len(batch) >= self.BATCH:
                    if not self._put(batch):
                        return
                    batch = []
            if self._put(batch):
                self._put(None)
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _walk_mapped(self, warn: Warn) -> Iterator[tuple[bytes, os.stat_result]]:
        if self._mapped_ready is not None:
            for warning in self._mapped_ready():
                warn(warning["path"], warning["reason"])
        yield from walk_mapped(self.mapping, warn)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[bytes, tuple | None, str | None]]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[tuple[bytes, tuple | None, str | None]]]:
        """The items in the lists they came in (``itertools.chain.from_iterable`` of this is
        the iteration without a generator's step per item)."""
        get, loads = self._queue.get, marshal.loads
        while True:
            item = get()
            if item is None:
                return
            if type(item) is bytes:  # from the walk's process
                if item[:1] == _RAISED:
                    raise pickle.loads(item[1:])
                item = loads(memoryview(item)[1:])
            elif isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop walking (the reader gave up); safe to call more than once."""
        self._stop.set()
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        if self._reading:  # the relaying thread sees the pipe end before it is closed
            self._thread.join(timeout=1.0)
        self._recv.close()


LARGE_FILE = 1 << 20  # count_tree notes the size of each file this large


def count_tree(
    sources: list[bytes], exclude: Excluder, stop, large: dict[bytes, int] | None = None
) -> Iterator[tuple[int, int]]:
    """Running (files, bytes) totals of the regular files ``walk`` would yield, for a first
    backup's progress totals and cache check; cheap: ``scandir`` in no particular order, one
    ``lstat`` per regular file (its size) and per folder (a kernel file system is not
    entered), no warnings. ``large`` gets path -> size of each file of ``LARGE_FILE`` bytes
    or more: a first backup's walk does not ``lstat`` files, and sizes its batches by these.

    Each folder is listed through a descriptor, so each ``lstat`` is ``fstatat`` of a name
    in it: the kernel does not walk the whole path again for every file of a deep tree."""
    pseudo = pseudo_devices()
    files = size = 0
    rules = exclude.active
    folders: list[bytes] = []
    fsencode, isfile, isdir = os.fsencode, stat.S_ISREG, stat.S_ISDIR
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    for src in sources:
        try:
            st = os.lstat(src)
        except OSError:
            continue
        if isfile(st.st_mode):
            files += 1
            size += st.st_size
        elif isdir(st.st_mode) and st.st_dev not in pseudo:
            folders.append(src)
    while folders:
        if stop():
            return
        folder = folders.pop()
        prefix = join(folder, b"")
        try:
            fd = os.open(folder, flags)
        except OSError:
            continue
        try:
            with os.scandir(fd) as it:
                entries = list(it)  # (names as str: the descriptor is not a bytes path)
            for e in entries:
                if rules:
                    name = fsencode(e.name)
                    if exclude(prefix + name, name):
                        continue
                try:
                    if e.is_file(follow_symlinks=False):
                        n = e.stat(follow_symlinks=False).st_size
                        files += 1
                        size += n
                        if n >= LARGE_FILE and large is not None:
                            large[prefix + fsencode(e.name)] = n
                        if not files % 2000:
                            yield files, size
                    elif (
                        e.is_dir(follow_symlinks=False)
                        and e.stat(follow_symlinks=False).st_dev not in pseudo
                    ):
                        folders.append(prefix + fsencode(e.name))
                except OSError:  # gone meanwhile: the walk warns about it
                    continue
        finally:
            os.close(fd)
    yield files, size
