"""What each forked helper process of the engine (chunkers, restore writers, the walk) does
first, and a flag the processes share."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """For a forked helper process: killed with its parent (no orphans), and deaf to Ctrl-C
    (the terminal sends it to the whole process group; the parent decides what it means)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: a killed backup leaves no orphans
    except (OSError, AttributeError):
        pass


class SharedFlag:
    """``threading.Event``'s ``set``/``is_set`` over one byte of shared memory, for forked
    helpers: restore writers look at it between files and between chunks, and a
    ``multiprocessing.Event`` takes a lock on every look (a tenth of a writer's time in small
    files)."""

    def __init__(self, ctx) -> None:
        self._value = ctx.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        self._value.value = True

    def is_set(self) -> bool:
        return self._value.value
