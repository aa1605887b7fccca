"""Packs in the main process: filling its own, uploading every pack, writing the index deltas.

The main process packs the chunks it makes itself (metadata); the chunkers pack file data in
shared memory. Every pack, from either, is uploaded and indexed here.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait

from agents.runtime.engine.errors import Cancelled
from agents.runtime.engine.format import PackBuilder
from agents.runtime.engine.layout import pack_blob
from agents.runtime.engine.repository import Repository
from agents.runtime.engine.upload_pool import UploadPool

WAIT_TICK = 0.1  # how often a wait for an upload checks ``cancel`` and reports progress
ABANDON_GRACE = 0.5  # on cancel, how long to wait for uploads in flight before leaving them


class Packer:
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
        self.pool = UploadPool(threads)
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

    def add_pack(self, pack_id: bytes, data: memoryview, rows: bytes, raw: int, release) -> int:
        """A pack a worker built in shared memory (its chunks counted in ``sealed_raw`` as
        their records arrived; ``rows``: its header's rows as stored, ``raw``: their plain
        bytes): index it and queue its upload; ``release()`` once it is stored or given up.
        Never waits: the workers' fixed set of pack buffers is what holds them back when
        uploads lag. Chunks another worker packed first stay in it unreferenced. Returns its
        pack number."""
        index = self.repo.index
        pack_no = index.add_pack(pack_id, len(data))
        self.new_bytes += index.add_packed(pack_no, rows, raw)
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
                raise Cancelled
            self.reap(block=False)
            self.on_wait()
        fut = self.pool.submit(self._upload, pack_id, data, raw, None, True)
        self.inflight.append((fut, pack_id, pack_no, rows))
        self.reap(block=False)

    def _upload(self, pack_id: bytes, data: memoryview, raw: int, release, slot: bool) -> int:
        try:
            self.repo.store.put(pack_blob(pack_id), data)
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
                    raise Cancelled
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
