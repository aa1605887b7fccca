"""``PortalSink``: engine progress events to the portal's job progress endpoint."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agents.runtime.engine.progress import ProgressSink

log = logging.getLogger("haven.agent.jobs")

MAX_WARNINGS = 1000


class PortalSink(ProgressSink):
    """Posts the latest progress event at most ``max_per_second`` times a second.

    ``post(event) -> dict`` sends one event and returns the portal's answer; an answer with
    ``"cancel": true`` sets ``cancel`` (the engine stops at its next check). While the engine
    says nothing new (a long scan, a big file), the last event is posted again every
    ``heartbeat`` seconds: the portal knows the agent is alive, and a cancel still arrives.
    A failed post is logged and retried with the next event; it never stops the backup.
    """

    def __init__(
        self,
        post: Callable[[dict], dict],
        *,
        max_per_second: float = 1.0,
        heartbeat: float = 2.0,
        cancel: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.post = post
        self.interval = 1.0 / max_per_second
        self.heartbeat = heartbeat
        self.cancel = cancel or threading.Event()
        self.clock = clock
        self.warnings: list[dict] = []
        self.warning_count = 0
        self.posted = 0
        self.failures = 0
        self._latest: dict | None = None
        self._dirty = False
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="haven-progress", daemon=True)

    # -- the engine's side ------------------------------------------------------------------
    def emit(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "warning":
            self.warning_count += 1
            if len(self.warnings) < MAX_WARNINGS:
                self.warnings.append({"path": event.get("path"), "reason": event.get("reason")})
            return
        if kind != "progress":
            return
        with self._cond:
            self._latest = event
            self._dirty = True
            self._cond.notify()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> PortalSink:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread after posting the last event (the final counters)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> PortalSink:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the posting thread -------------------------------------------------------------------
    def _loop(self) -> None:
        last_post = -1e18
        while True:
            with self._cond:
                while not self._stopping:
                    now = self.clock()
                    due_heartbeat = now - last_post >= self.heartbeat
                    if self._dirty and now - last_post >= self.interval:
                        break
                    if due_heartbeat:
                        break
                    wait = (
                        last_post + self.interval - now
                        if self._dirty
                        else last_post + self.heartbeat - now
                    )
                    self._cond.wait(timeout=max(wait, 0.01))
                stopping = self._stopping
                event = self._latest
                dirty = self._dirty
                self._dirty = False
            if event is None:
                event = {"type": "progress", "phase": "starting"}
            if dirty or not stopping:
                self._send(event)
            last_post = self.clock()
            if stopping:
                return

    def _send(self, event: dict) -> None:
        try:
            answer = self.post(event)
        except Exception as exc:  # the portal being away must not stop the backup
            self.failures += 1
            log.warning("could not report progress: %s", exc)
            return
        self.posted += 1
        if isinstance(answer, dict) and answer.get("cancel"):
            if not self.cancel.is_set():
                log.info("the portal asked to cancel this job")
            self.cancel.set()
