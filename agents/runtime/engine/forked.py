"""What each forked helper process of the engine (chunkers, restore writers) does first."""

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
