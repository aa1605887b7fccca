"""What ``haven-agent`` prints, in one place.

Without ``--json``: lines for people on stdout, ``error: ...`` on stderr, and progress as a
bar with rate and ETA (tqdm, on stderr) when stdout is a terminal, or a plain line every few
seconds when it is not (a log, a pipe). With ``--json``: exactly one JSON document on stdout
when the command ends, ``{"ok", "exit_code", ...the command's data, "messages"}`` (with
``"error"`` when it failed), and progress as JSON lines on stderr, one event per line, so
that stdout always parses as a whole. docs/agent.md, "Output for scripts".

Commands print through ``current()``; ``main()`` starts each run with ``begin()`` and ends
it with ``finish()``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from agents.runtime.engine.progress import Event, ProgressSink
from agents.runtime.sizes import size_text

# A plain progress line at most this often (seconds): a log stays readable; a JSON line at
# most once a second. The engine's events come ten times a second: each kind throttles
# itself, and shows the last figures when the operation ends.
PLAIN_INTERVAL_S = 5.0
JSON_INTERVAL_S = 1.0


def human_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Output:
    def __init__(
        self, *, json_mode: bool = False, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> None:
        self.json = json_mode
        self._stdout = stdout
        self._stderr = stderr
        self.messages: list[str] = []
        self.data: dict[str, Any] = {}
        self.finished = False

    @property
    def stdout(self) -> TextIO:
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> TextIO:
        return self._stderr or sys.stderr

    def say(self, text: str = "") -> None:
        """A line for people (kept as one of ``messages`` with --json)."""
        if self.json:
            if text:
                self.messages.append(text)
            return
        print(text, file=self.stdout, flush=True)

    def note(self, text: str) -> None:
        """A line for people on stderr: warnings, notes beside the output."""
        if self.json:
            self.messages.append(text)
            return
        print(text, file=self.stderr, flush=True)

    def result(self, data: dict[str, Any]) -> None:
        """The command's data: the JSON document's fields (ignored without --json)."""
        self.data.update(data)

    def error(self, message: str) -> None:
        if self.json:
            self.data["error"] = message
            return
        print(f"error: {message}", file=self.stderr, flush=True)

    def finish(self, code: int) -> int:
        """Print the JSON document (once) and hand back the exit code."""
        if self.json and not self.finished:
            doc = {"ok": code == 0, "exit_code": code, **self.data, "messages": self.messages}
            print(json.dumps(doc, indent=2, ensure_ascii=False, default=str), file=self.stdout)
            self.stdout.flush()
        self.finished = True
        return code

    def progress(self, label: str, *, count_unit: str = "files") -> Progress:
        if self.json:
            return JsonProgress(self, label, count_unit)
        if self.stdout.isatty():
            return BarProgress(self, label, count_unit)
        return PlainProgress(self, label, count_unit)


class Progress:
    """How far an operation is: bytes done of a total (when known) and a count of files or
    packs. ``update`` may be called as often as wanted; each kind throttles itself."""

    def __init__(self, out: Output, label: str, count_unit: str) -> None:
        self.out, self.label, self.count_unit = out, label, count_unit
        self.started = time.monotonic()

    def update(
        self,
        *,
        done: int,
        total: int | None = None,
        count: int | None = None,
        count_total: int | None = None,
        rate_bps: float | None = None,
        eta_s: float | None = None,
        phase: str = "",
    ) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """The operation ended: the bar is finished (or nothing is left to say)."""

    def _rate_eta(self, done, total, rate_bps, eta_s) -> tuple[float, float | None]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = rate_bps if rate_bps is not None else done / elapsed
        if eta_s is None and total and rate > 0:
            eta_s = max(total - done, 0) / rate
        return rate, eta_s

    def _counted(self, count, count_total) -> str:
        if count is None:
            return ""
        return f"{count}{f' of {count_total}' if count_total else ''} {self.count_unit}"


class BarProgress(Progress):
    """A tqdm bar on stderr: bytes, percent, rate and ETA; the count and phase beside it."""

    def __init__(self, out: Output, label: str, count_unit: str) -> None:
        super().__init__(out, label, count_unit)
        self.bar = tqdm(
            desc=label,
            total=None,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=out.stderr,
            dynamic_ncols=True,
            mininterval=0.5,
            leave=True,
        )

    def update(
        self, *, done, total=None, count=None, count_total=None, rate_bps=None, eta_s=None, phase=""
    ):
        if total is not None and total != self.bar.total:
            self.bar.total = max(total, done)
        counted = self._counted(count, count_total)
        shown = phase.replace("_", " ")
        postfix = ", ".join(p for p in (shown if shown != self.label else "", counted) if p)
        if postfix != getattr(self, "_postfix", None):
            self._postfix = postfix
            self.bar.set_postfix_str(postfix, refresh=False)
        if done >= self.bar.n:
            self.bar.update(done - self.bar.n)
        else:  # a total re-counted: follow it
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class PlainProgress(Progress):
    """A line every few seconds on stdout, for a log: the same figures as the bar."""

    def __init__(self, out: Output, label: str, count_unit: str) -> None:
        super().__init__(out, label, count_unit)
        self.last = 0.0
        self.pending: str = ""

    def update(
        self, *, done, total=None, count=None, count_total=None, rate_bps=None, eta_s=None, phase=""
    ):
        rate, eta = self._rate_eta(done, total, rate_bps, eta_s)
        parts = [self._counted(count, count_total)]
        amount = size_text(done) + (f" of {size_text(total)}" if total else "")
        if total:
            amount += f" ({100 * min(done, total) // total}%)"
        parts += [amount, f"{size_text(rate)}/s"]
        if eta is not None:
            parts.append(f"ETA {human_seconds(eta)}")
        line = f"{self.label}: " + ", ".join(p for p in parts if p)
        now = time.monotonic()
        if now - self.last >= PLAIN_INTERVAL_S:
            self.last = now
            self.pending = ""
            self.out.say(line)
        else:
            self.pending = line

    def close(self) -> None:
        if self.pending:  # the last figures, so a log ends on them
            self.out.say(self.pending)
            self.pending = ""


class JsonProgress(Progress):
    """A JSON object a second at most on stderr (stdout keeps the one document), and the
    last figures when the operation ends."""

    def __init__(self, out: Output, label: str, count_unit: str) -> None:
        super().__init__(out, label, count_unit)
        self.last = 0.0
        self.pending: dict | None = None

    def update(
        self, *, done, total=None, count=None, count_total=None, rate_bps=None, eta_s=None, phase=""
    ):
        rate, eta = self._rate_eta(done, total, rate_bps, eta_s)
        event = {
            "type": "progress",
            "operation": self.label,
            "phase": phase or None,
            "bytes_done": done,
            "bytes_total": total,
            "count_done": count,
            "count_total": count_total,
            "count_unit": self.count_unit,
            "rate_bps": round(rate),
            "eta_s": None if eta is None else round(eta, 1),
        }
        now = time.monotonic()
        if now - self.last >= JSON_INTERVAL_S:
            self.last, self.pending = now, None
            self._print(event)
        else:
            self.pending = event

    def close(self) -> None:
        if self.pending is not None:
            self._print(self.pending)
            self.pending = None

    def _print(self, event: dict) -> None:
        print(json.dumps(event), file=self.out.stderr, flush=True)


class EventSink(ProgressSink):
    """The engine's progress events (docs/progress.md) shown through a ``Progress``."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def emit(self, event: Event) -> None:
        if event.get("type") != "progress":
            return
        show(self.progress, event)


def show(progress: Progress, event: dict) -> None:
    """One progress event (the engine's, or a job's latest as the portal keeps it)."""
    progress.update(
        done=int(event.get("bytes_done") or 0),
        total=event.get("bytes_total"),
        count=event.get("files_done"),
        count_total=event.get("files_total"),
        rate_bps=event.get("rate_bps"),
        eta_s=event.get("eta_s"),
        phase=str(event.get("phase") or ""),
    )


_current = Output()


def use(output: Output) -> Output:
    global _current
    _current = output
    return output


def begin(args) -> Output:
    """A fresh output for one run of a command, in the mode its ``--json`` asks for."""
    return use(Output(json_mode=bool(getattr(args, "json", False))))


def current() -> Output:
    return _current
