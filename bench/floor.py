"""The floor of an initial backup (issue 16, item 5): ``python -m bench.floor SRC OUT``.

The engine's own worker pipeline and nothing else: the same forked chunking processes
(``chunkers.worker_main``: read, FastCDC, keyed BLAKE3, zstd, AES-GCM sealed straight into
shared pack buffers, one worker per core as a backup uses), and the packs written by the same
upload threads to a ``LocalDirectoryStore`` (temporary file, fsync, link, as a backup's
local repository). Left out is all a backup adds around it: no passphrase or key file (fresh
random master keys), no chunk index (every chunk is new to an empty one), no previous recovery
point, no manifest, no metadata (the walk is ``scandir`` without ``lstat``; the workers still
``fstat`` and read extended attributes, because the pipeline does), no index delta.

The parent lists the regular files (``DirEntry.is_file`` from ``d_type``), hands them to the
workers in batches as a backup does, and writes each pack as it arrives. It prints one line:
files, bytes read, packs and bytes written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.engine.backup import DEFAULT_PACK_SIZE
from agents.runtime.engine.chunkers import ChunkerPool
from agents.runtime.engine.crypto import ChunkerParams, MasterKeys
from agents.runtime.engine.index import ChunkIndex
from agents.runtime.engine.layout import pack_blob
from agents.runtime.engine.upload_pool import UploadPool

BATCH = 256  # files per task (a backup sends at most 1,024 walked entries between flushes)


class _FloorRepo:
    """What ``ChunkerPool`` reads from a repository: the keys and an (empty) chunk index."""

    def __init__(self, keys: MasterKeys) -> None:
        self.keys = keys
        self.index = ChunkIndex()


def regular_files(root: str):
    stack = [os.fsencode(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    yield e.path


def run_floor(
    src: str,
    out: str,
    *,
    workers: int,
    level: int = 3,
    uploads: int = 2,
    keys: MasterKeys | None = None,
) -> dict:
    """The pipeline over every regular file under ``src``, packs into the folder ``out``;
    ``keys``: fresh ones (new-repository chunker parameters) unless given."""
    store = LocalDirectoryStore(out, create=True)
    repo = _FloorRepo(keys or MasterKeys.generate(ChunkerParams()))
    pool = ChunkerPool(repo, workers, level, DEFAULT_PACK_SIZE, uploads)  # type: ignore[arg-type]
    pool.start()
    assert pool.tasks is not None and pool.buffers is not None
    buffers = pool.buffers
    uploader = UploadPool(uploads)
    inflight = []
    files = read = packs = written = 0
    open_tasks = 0

    def upload(pack_id: bytes, buf_no: int, length: int) -> int:
        try:
            store.put(pack_blob(pack_id), buffers.view(buf_no, length))
            return length
        finally:
            buffers.release(buf_no)

    def handle(msg) -> None:
        nonlocal open_tasks, read, packs, files
        kind = msg[0]
        if kind == "pack":
            _, _wid, buf_no, length, pack_id, _rows, _raw = msg
            inflight.append(uploader.submit(upload, pack_id, buf_no, length))
            packs += 1
        elif kind in ("part", "done"):  # (chunkers.run_task)
            read += msg[2]
            files += msg[5]
            if kind == "done":
                open_tasks -= 1

    batch: list = []
    task_no = 0
    for path in regular_files(src):
        batch.append(path)  # not lstat'ed, as a first backup's files (``chunkers.run_task``)
        if len(batch) == BATCH:
            pool.tasks.put((task_no, [batch], False))  # False: no manifest entries
            task_no, open_tasks, batch = task_no + 1, open_tasks + 1, []
            while open_tasks >= 2 * workers:  # as a backup: at most two tasks per worker queued
                handle(pool.get(1.0) or ("idle",))
    if batch:
        pool.tasks.put((task_no, [batch], False))
        open_tasks += 1
    pool.ask_to_finish()
    exited = 0
    while exited < workers:
        msg = pool.get(1.0)
        if msg is None:
            continue
        if msg[0] == "exit":
            exited += 1
        else:
            handle(msg)
    for fut in inflight:
        written += fut.result()
    uploader.shutdown(wait=True)
    pool.stop(kill=False)
    return {"files": files, "read": read, "packs": packs, "written": written}


def main(argv: list[str]) -> None:
    src, out = argv[0], argv[1]
    workers = max(1, min(os.cpu_count() or 1, 4))  # the backup's default
    r = run_floor(src, out, workers=workers)
    print(f"floor: {r['files']} files, {r['read']} B read, {r['packs']} packs, "
          f"{r['written']} B written to {Path(out)}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
