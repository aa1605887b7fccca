"""What pytest-xdist's workers (``make test`` runs two) share and how they take turns.

Each worker is its own process with its own data directory and Redis database
(``servers.worker_environment``, set in ``tests/conftest.py``); these helpers are for the
little they share: the run's temporary directory, one agent installation, and a lock that
lets a test marked ``alone`` run with no other test beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's temporary directory: each worker's own is below it; without workers, the
    run's."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """One process at a time, across the workers."""
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def turn(root: Path, *, alone: bool) -> Iterator[None]:
    """Run a test beside the other workers' tests, or ``alone``: then it waits for the
    running ones to end and the others wait for it. Everyone passes a turnstile first, which
    a waiting ``alone`` test holds, so the other workers cannot keep it waiting for ever."""
    with (
        open(root / "turnstile.lock", "a") as turnstile,
        open(root / "running.lock", "a") as running,
    ):
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(running, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(running, fcntl.LOCK_UN)
