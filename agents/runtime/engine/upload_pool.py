"""The upload threads: a tiny pool of daemon threads that never holds the process up at exit."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future


class UploadPool:
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
