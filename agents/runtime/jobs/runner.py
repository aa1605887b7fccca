"""One runner for every job the portal gives an agent: ``run_job``.

A job kind (backup, restore, download) supplies only its own work: a function that takes the
``JobRun`` (the portal's job, the progress sink, the cancel event) and returns a
``protocol.JobResult``. The runner owns the rest, the same for every kind: asking the portal
whether the job is still wanted and telling it the job started, the progress sink, the
registration that lets ``haven.agent.cancel`` reach the job, the words a person reads when the
work fails, and the delivery of the result.
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
from agents.runtime.jobs.sink import PortalSink
from agents.runtime.portal_api import PortalRefused
from agents.runtime.protocol import JobResult

log = logging.getLogger("haven.agent.jobs")

RESULT_ATTEMPTS = 5

# Jobs running in this process, so a ``haven.agent.cancel`` task can reach them.
RUNNING: dict[str, threading.Event] = {}


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
    wrong_passphrase: str,
    max_per_second: float = 1.0,
    heartbeat: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Run the portal's job ``job_id`` with ``work``; returns the result as posted (or
    ``{"status": "skipped"}`` when the portal no longer wants the job).

    ``wrong_passphrase`` begins the job's failure message when the passphrase does not open
    the repository (what that means differs: nothing was backed up, nothing was restored).
    """
    begun = _begin(portal, job_id)
    if begun is None:
        return {"status": protocol.SKIPPED}
    job, cancel = begun
    RUNNING[job_id] = cancel
    sink = PortalSink(
        lambda event: portal.post(f"jobs/{job_id}/progress/", event),
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
    payload = result.to_wire()
    deliver_result(portal, job_id, payload, sleep=sleep)
    return payload


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


def deliver_result(portal, job_id: str, payload: dict, *, sleep=time.sleep) -> dict | None:
    """The result must arrive: retry a portal that is briefly away; a refusal is final."""
    delay = 1.0
    for attempt in range(RESULT_ATTEMPTS):
        try:
            return portal.post(f"jobs/{job_id}/result/", payload)
        except PortalRefused as exc:
            log.error("the portal refused the result of job %s: %s", job_id, exc)
            return None
        except Exception as exc:  # unreachable, a 5xx, a dropped connection: try again
            log.warning(
                "could not post the result of job %s (attempt %d): %s", job_id, attempt + 1, exc
            )
            sleep(delay)
            delay = min(delay * 2, 30)
    return None


def cancel_job(job_id: str) -> bool:
    """Stop a job running in this process; False when it is not running here."""
    event = RUNNING.get(job_id)
    if event is None:
        return False
    event.set()
    return True
