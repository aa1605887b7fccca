"""Progress events and the sinks that receive them (schema: docs/progress.md).

An event is a JSON-able ``dict`` with ``"schema": 1`` and a ``"type"``: ``"progress"``
(phase, counters, rate, ETA, current file), ``"warning"`` (a file that could not be handled)
or ``"finished"`` (the final status). Sinks must not raise; the engine calls them inline.
"""

from __future__ import annotations

import abc
import os
import threading
import time
from typing import Any

SCHEMA = 1
PHASES = ("scanning", "backing_up", "finalizing", "restoring", "verifying", "compacting")

Event = dict[str, Any]


class ProgressSink(abc.ABC):
    @abc.abstractmethod
    def emit(self, event: Event) -> None: ...


class NullSink(ProgressSink):
    def emit(self, event: Event) -> None:
        pass


class ListSink(ProgressSink):
    """Keeps every event (for tests)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of_type(self, kind: str) -> list[Event]:
        return [e for e in self.events if e["type"] == kind]


class ThrottledSink(ProgressSink):
    """Passes at most ``max_per_second`` progress events; phase changes, warnings and the
    final event always pass (a dropped event's state is carried by the next one)."""

    def __init__(self, inner: ProgressSink, *, max_per_second: float = 2.0, clock=time.monotonic):
        self.inner = inner
        self.interval = 1.0 / max_per_second
        self.clock = clock
        self._last = -1e18
        self._phase: str | None = None

    def emit(self, event: Event) -> None:
        now = self.clock()
        if event["type"] == "progress":
            if event.get("phase") == self._phase and now - self._last < self.interval:
                return
            self._phase = event.get("phase")
        self._last = now
        self.inner.emit(event)


def display_path(path: bytes) -> str:
    """A file name for people: undecodable bytes shown as ``\\xNN``."""
    return path.decode("utf-8", "backslashreplace")


class Reporter:
    """Keeps the counters of one operation and emits progress events to a sink."""

    def __init__(self, sink: ProgressSink | None, operation: str, *, every: float = 0.1):
        self.sink = sink or NullSink()
        self.operation = operation
        self.phase = "scanning"
        self.started = time.monotonic()
        self.every = every
        self._next = 0.0
        self.files_done = 0
        self.files_total: int | None = None
        self.bytes_done = 0
        self.bytes_total: int | None = None
        self.new_bytes = 0
        self.stored_bytes = 0
        # Backup: plain bytes counted in bytes_done whose packs still wait for their upload.
        self.unsettled_bytes = 0
        self.current: bytes | None = None

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.emit(force=True)

    def event(self) -> Event:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        # Rate and ETA follow the slower stage: bytes read, less those still waiting for an
        # upload (none when uploads keep up, so then it is simply bytes_done).
        settled = max(self.bytes_done - self.unsettled_bytes, 0)
        rate = settled / elapsed
        # A total may be an estimate (an incremental backup starts from the previous point's):
        # it grows with what is done rather than show "5 of 4 files".
        files_total = _at_least(self.files_total, self.files_done)
        bytes_total = _at_least(self.bytes_total, self.bytes_done)
        eta = None
        if bytes_total and rate > 0 and bytes_total >= settled:
            eta = round((bytes_total - settled) / rate, 1)
        return {
            "schema": SCHEMA,
            "type": "progress",
            "operation": self.operation,
            "phase": self.phase,
            "elapsed_s": round(elapsed, 3),
            "files_done": self.files_done,
            "files_total": files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": bytes_total,
            "new_bytes": self.new_bytes,
            "stored_bytes": self.stored_bytes,
            "rate_bps": round(rate),
            "eta_s": eta,
            "current": display_path(self.current) if self.current is not None else None,
        }

    def emit(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.every
        self.sink.emit(self.event())

    def warn(self, path: bytes | str | None, reason: str) -> dict:
        shown = display_path(os.fsencode(path)) if path is not None else None
        warning = {"path": shown, "reason": reason}
        self.sink.emit(
            {"schema": SCHEMA, "type": "warning", "operation": self.operation, **warning}
        )
        return warning

    def finish(self, status: str, **extra: Any) -> None:
        self.emit(force=True)
        self.sink.emit(
            {
                "schema": SCHEMA,
                "type": "finished",
                "operation": self.operation,
                "status": status,
                "elapsed_s": round(time.monotonic() - self.started, 3),
                **extra,
            }
        )


def _at_least(total: int | None, done: int) -> int | None:
    """An estimated total, never below what is done (None: no total)."""
    return None if total is None else max(total, done)
