"""The restore's writer processes (or threads), each running a ``FileWriter``."""

from __future__ import annotations

import multiprocessing
import queue
import threading

from agents.runtime.engine.errors import Cancelled, EngineError
from agents.runtime.engine.forked import SharedFlag, die_with_parent
from agents.runtime.engine.format import decode_entries

PROGRESS_SECONDS = 0.1  # and, between files, every 0.1 s (``file_writer.PROGRESS_BYTES``)


def writer_main(tasks, results, make_writer, cancel, forked: bool) -> None:
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
            except Cancelled:
                pass  # the file being written was removed; the rest is not restored
            results.put(("done", batch_id, writer.report()))
    except BaseException as exc:  # the calling process raises it as an EngineError
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        writer.close()
        results.put(("exit", None))


class WriterPool:
    """The writers: forked processes when the store can be read from several processes
    (local storage; no GIL hand-offs around every system call), else threads."""

    def __init__(self, count: int, make_writer, processes: bool):
        self.count = count
        self.processes = processes
        if processes:
            ctx = multiprocessing.get_context("fork")
            self.tasks, self.results = ctx.SimpleQueue(), ctx.SimpleQueue()
            self.cancel: SharedFlag | threading.Event = SharedFlag(ctx)
            self.procs = [
                ctx.Process(target=writer_main, daemon=True,
                            args=(self.tasks, self.results, make_writer, self.cancel, True))
                for _ in range(count)
            ]  # fmt: skip
        else:
            self.tasks, self.results = queue.SimpleQueue(), queue.SimpleQueue()
            self.cancel = threading.Event()
            self.procs = [
                threading.Thread(target=writer_main, daemon=True, name="haven-restore",
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
