"""A first backup's count of its files and bytes (``scan.count_tree``), in a forked process.

The count ``lstat``'s every file (the walk of a first backup does not) and runs while the
backup reads them. On a thread, each of its ``lstat`` calls gives the GIL up and takes it
back, in a contest with the main process's threads; in a process of its own it contends
for nothing but a core, and is done long before the backup (measured in docs/benchmarks.md).
Messages on the pipe: ``(files, bytes, large)`` every 2,000 files and at the end (``large``:
the path -> size of each large file counted since the previous message), then ``None``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator

from agents.runtime.engine.forked import die_with_parent
from agents.runtime.engine.scan import Excluder, count_tree


def _count_main(sources: list[bytes], exclude: Excluder, conn) -> None:
    die_with_parent()
    large: dict[bytes, int] = {}  # (count_tree fills it; emptied once sent)
    try:
        for files, size in count_tree(sources, exclude, lambda: False, large):
            conn.send((files, size, large))
            large.clear()
        conn.send(None)
    except BrokenPipeError:  # the backup ended first
        pass
    finally:
        conn.close()


class CountProcess:
    """``count_tree`` of ``sources`` in a forked process; iterate for its running totals."""

    def __init__(self, sources: list[bytes], exclude: Excluder) -> None:
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_count_main, args=(sources, exclude, send), daemon=True, name="haven-count"
        )
        self._proc.start()
        send.close()
        self.complete = False  # the final totals arrived

    def totals(self, stop) -> Iterator[tuple[int, int, dict[bytes, int]]]:
        """(files, bytes, large files since the last) until the count ends (``complete``
        then) or ``stop()``; ends early, not complete, when the process died."""
        recv = self._recv
        while not stop():
            if not recv.poll(0.2):
                continue
            try:
                msg = recv.recv()
            except EOFError:
                return
            if msg is None:
                self.complete = True
                return
            yield msg

    def close(self) -> None:
        """End the process (if it still counts) and its pipe; safe to call more than once."""
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()
        self._recv.close()
