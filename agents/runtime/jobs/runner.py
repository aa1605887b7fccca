"""One runner for every job the portal gives an agent: ``run_job``.

A job kind (backup, restore, download) supplies only its own work: a function that takes the
``JobRun`` (the portal's job, the progress sink, the cancel event) and returns a
``protocol.JobResult``. The runner owns the rest, the same for every kind: asking the portal
whether the job is still wanted and telling it the job started, the progress sink, the
registration that lets ``haven.agent.cancel`` reach the job, the words a person reads when the
work fails, and the delivery of the result: the job is journaled in the machine's result
outbox (``jobs.outbox``) once the portal says it started, its result replaces the journal
before the first attempt to post it, and it is posted until the portal accepts it, across
worker restarts. A job whose process died leaves its journal, which the next worker turns
into a Failed result that says what happened.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agents.runtime import protocol
from agents.runtime.blobstore.base import StorageError
from agents.runtime.engine.errors import WrongPassphrase
from agents.runtime.jobs.outbox import JOURNAL_EVERY, TASK_PATIENCE, Outbox
from agents.runtime.jobs.sink import PortalSink
from agents.runtime.protocol import JobResult

log = logging.getLogger("haven.agent.jobs")

# Jobs running in this process, so a ``haven.agent.cancel`` task can reach them.
RUNNING: dict[str, threading.Event] = {}


def passphrase_text(passphrase: Callable[[], str] | str) -> str:
    """A job's passphrase: given, or read (the saved one) only when the job opens the
    repository."""
    return passphrase() if callable(passphrase) else passphrase


class JobAborted(Exception):
    """The job cannot run; the message says why, for the person reading the job page."""


@dataclass
class JobRun:
    """What a job kind's work gets: the portal's job (``GET jobs/<id>/``), the sink its
    progress goes to, and the event that is set when the job is to stop."""

    job_id: str
    job: dict
    sink: PortalSink
    cancel: threading.Event


Work = Callable[[JobRun], JobResult]


def run_job(
    job_id: str,
    work: Work,
    *,
    portal,
    outbox: Outbox,
    kind: str,
    wrong_passphrase: str,
    max_per_second: float = 1.0,
    heartbeat: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    patience: float = TASK_PATIENCE,
) -> dict:
    """Run the portal's job ``job_id`` with ``work``; returns the result as kept in the
    outbox and posted (or ``{"status": "skipped"}`` when the portal no longer wants the
    job). ``kind`` (backup, restore, download) words the failure of an abandoned journal.

    ``wrong_passphrase`` begins the job's failure message when the passphrase does not open
    the repository (what that means differs: nothing was backed up, nothing was restored).
    """
    begun = _begin(portal, job_id)
    if begun is None:
        return {"status": protocol.SKIPPED}
    job, cancel = begun
    outbox.started(job_id, kind)
    RUNNING[job_id] = cancel
    journaled = {"at": 0.0}

    def post_progress(event: dict) -> dict:
        now = time.monotonic()
        if now - journaled["at"] >= JOURNAL_EVERY:  # the files done, for an abandoned job
            journaled["at"] = now
            try:
                outbox.progressed(job_id, int(event.get("files_done") or 0))
            except (OSError, ValueError) as exc:
                log.warning("could not journal the progress of job %s: %s", job_id, exc)
        return portal.post(f"jobs/{job_id}/progress/", event)

    sink = PortalSink(
        post_progress,
        max_per_second=max_per_second,
        heartbeat=heartbeat,
        cancel=cancel,
    )
    try:
        sink.start()
        result = work(JobRun(job_id=job_id, job=job, sink=sink, cancel=cancel))
    except JobAborted as exc:
        result = JobResult.failed(str(exc))
    except Exception as exc:  # every engine/storage failure carries a message for people
        log.warning("job %s failed", job_id, exc_info=True)
        result = JobResult.failed(explain(exc, wrong_passphrase=wrong_passphrase))
    finally:
        sink.close()
        RUNNING.pop(job_id, None)
    entry = outbox.put(job_id, result.to_wire())  # on disk before the first attempt
    outbox.deliver(portal, entry, patience=patience, sleep=sleep)
    return entry.wire()


def _begin(portal, job_id: str) -> tuple[dict, threading.Event] | None:
    """The job and its cancel event once the portal says it started; None: nothing to do."""
    job = portal.get(f"jobs/{job_id}/")
    if job.get("cancel") or job.get("status") not in protocol.ACTIVE_STATUSES:
        log.info("job %s is %s; nothing to do", job_id, job.get("status"))
        return None
    started = portal.post(f"jobs/{job_id}/start/")
    if started.get("cancel") and started.get("status") not in protocol.ACTIVE_STATUSES:
        return None
    cancel = threading.Event()
    if started.get("cancel"):
        cancel.set()  # asked to stop while it was starting: the work ends at its first check
    return job, cancel


def explain(exc: Exception, *, wrong_passphrase: str) -> str:
    """A failure in words a person can act on."""
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, WrongPassphrase):
        return f"{wrong_passphrase}: {text}"
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"The agent could not read or write{where}: {exc.strerror or text}"
    if isinstance(exc, StorageError):
        return f"The vault's storage could not be used: {text}"
    return text[0].upper() + text[1:]


def cancel_job(job_id: str) -> bool:
    """Stop a job running in this process; False when it is not running here."""
    event = RUNNING.get(job_id)
    if event is None:
        return False
    event.set()
    return True
