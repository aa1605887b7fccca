"""A running job's steady progress report, answered on the server's event loop.

``POST /api/agent/jobs/<id>/progress/`` arrives once a second from every running job: the
portal's busiest endpoint. ``portal.hotpath`` hands it here before Django. The common
case — a running job of the calling machine whose report changes only numbers — is done
without Django's request cycle, a thread, or a database connection:

- the machine from its token (``agents.live_auth``: an in-process cache, 5 s at most) and
  the per-machine rate limit (one Redis round trip);
- the job from an in-process cache of running jobs (machine, vault, the shape of its last
  report); a miss loads the row once, in the loop's executor;
- the report to the cache where pages read it (``selectors.live_progress``, the same key
  and encoding as ``jobs.services.live.job_progress_publish``) and pushed as the same
  small JSON to the job's and the vault's groups;
- the row written at most every ``PROGRESS_WRITE_SECONDS``, as the view does; that write
  also re-reads the job's status and cancel request. **Bound**: a cancel reaches the agent
  in the answer to a report at most ``PROGRESS_WRITE_SECONDS`` after it was asked (it is
  also sent through the broker at once), and a job that ended stops being served here
  at the next write.

A running job's report that changes the fragments' shape (the first, a new phase) is
recorded as the view records it (row written, fragments rendered and pushed), on the
start threads below. Everything else returns None and the request goes on to Django's
view, which answers it as before: a job not running or not the machine's, a malformed
body, a machine over its rate limit, Redis or the database unreachable.

``POST /api/agent/jobs/<id>/start/`` of a queued or waiting job of the calling machine is
done here too (``start``): when a schedule fires, every machine on it starts at once, and
200 starts through Django's request cycle (two ORM token checks, the middleware) queued
behind its request limit for seconds. The job is marked running exactly as the view does
(``jobs.services.job_mark_started``, under the machine's repository fence) on one of
``START_THREADS`` threads of its own — so a burst of starts never holds up the executor
the steady reports' database work runs on — and its fragments are rendered for the
groups some socket hears and pushed from the loop.
Any other start (a job already running or ended, another machine's) goes to the view.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

import redis.exceptions
from channels.layers import get_channel_layer
from django.core.cache.backends.redis import RedisSerializer
from django.db import DatabaseError, connection
from django.utils import timezone

from agents.api_auth import RATE_LIMIT_PER_MINUTE, json_object
from agents.live_auth import LiveMachine, rate_count
from agents.runtime.protocol import MAX_API_BODY
from jobs import selectors
from jobs.api_views import PROGRESS_FIELDS
from jobs.models import Job
from jobs.services.jobs import (
    PROGRESS_WRITE_SECONDS,
    _clean_progress,
    job_mark_started,
    job_record_progress,
)
from jobs.services.live import (
    LIVE_PROGRESS_TTL,
    job_fragments,
    job_group,
    progress_changes_shape,
    progress_fields,
)
from portal import realtime
from portal.pools import ProcessThreadPool, cache_key, db_in_executor
from vaults.services import group_for_vault

log = logging.getLogger(__name__)

JOB_CACHE_ENTRIES = 20_000
# A job not heard from for this long is dropped from the cache (loaded again if it is).
JOB_IDLE_SECONDS = 60.0


@dataclass
class RunningJob:
    machine_id: object
    vault_id: object
    operation: str
    started_at: datetime | None
    progress: dict  # the last report seen here: its shape decides a re-render
    row_written_at: datetime  # the row's last_report_at
    cancel: bool
    seen: float = 0.0  # monotonic


_jobs: dict[str, RunningJob] = {}
_serializer = RedisSerializer()


def forget_jobs() -> None:
    _jobs.clear()


def _load_running(job_id: str) -> RunningJob | None:
    row = (
        Job.objects.filter(pk=job_id, status=Job.Status.RUNNING)
        .values_list(
            "machine_id",
            "vault_id",
            "operation",
            "started_at",
            "progress",
            "last_report_at",
            "cancel_requested_at",
        )
        .first()
    )
    if row is None:
        return None
    machine_id, vault_id, operation, started_at, progress, last_report_at, cancel_at = row
    return RunningJob(
        machine_id=machine_id,
        vault_id=vault_id,
        operation=operation,
        started_at=started_at,
        progress=progress or {},
        row_written_at=last_report_at or started_at or timezone.now(),
        cancel=cancel_at is not None,
    )


def _write_row(job_id: str, progress: dict, bytes_transferred: int, now: datetime) -> bool | None:
    """The row brought up to this report, in one statement that also says whether a cancel
    was asked; None: the job is no longer running (Django's view answers that)."""
    meta = Job._meta
    quote = connection.ops.quote_name
    field = meta.get_field
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(meta.db_table)} SET progress = %s, bytes_transferred = %s, "
            "last_report_at = %s WHERE id = %s AND status = %s RETURNING cancel_requested_at",
            [
                field("progress").get_db_prep_save(progress, connection),
                bytes_transferred,
                field("last_report_at").get_db_prep_save(now, connection),
                field("id").get_db_prep_value(job_id, connection),
                Job.Status.RUNNING.value,
            ],
        )
        row = cursor.fetchone()
    return None if row is None else row[0] is not None


_load_running_async = db_in_executor(_load_running)
_write_row_async = db_in_executor(_write_row)


async def _running_job(job_id: str) -> RunningJob | None:
    job = _jobs.get(job_id)
    now = time.monotonic()
    if job is None or now - job.seen > JOB_IDLE_SECONDS:
        job = await _load_running_async(job_id)
        if job is None:
            _jobs.pop(job_id, None)
            return None
        if len(_jobs) >= JOB_CACHE_ENTRIES:
            for key in list(_jobs)[: JOB_CACHE_ENTRIES // 2]:
                del _jobs[key]
        _jobs[job_id] = job
    job.seen = now
    return job


async def progress(job_id: str, machine: LiveMachine, body: bytes) -> dict | None:
    """The answer to a steady report, or None: Django's view answers this one."""
    job = await _running_job(job_id)
    if job is None or job.machine_id != machine.machine_id:
        return None
    event = json_object(body, max_bytes=MAX_API_BODY)
    if event is None:
        return None
    if rate_count(machine.machine_id) > RATE_LIMIT_PER_MINUTE:
        return None  # the view answers 429 (counting it once more, as a refusal does)
    report = _clean_progress(event)
    if progress_changes_shape(job.progress, report):
        _jobs.pop(job_id, None)  # rendered and written below; the row loaded again next
        cancel = await _record_reshaped_async(job_id, machine.machine_id, event)
        return None if cancel is None else {"cancel": cancel}
    now = timezone.now()
    transferred = int(report.get("stored_bytes") or 0)
    if (now - job.row_written_at).total_seconds() >= PROGRESS_WRITE_SECONDS:
        cancel = await _write_row_async(job_id, report, transferred, now)
        if cancel is None:
            _jobs.pop(job_id, None)
            return None
        job.row_written_at, job.cancel = now, cancel
    job.progress = report
    live = {"progress": report, "bytes_transferred": transferred, "last_report_at": now}
    shown = Job(
        pk=job_id,
        status=Job.Status.RUNNING,
        operation=job.operation,
        started_at=job.started_at,
        progress=report,
        bytes_transferred=transferred,
    )
    realtime.loop_batch().add(
        groups=[job_group(job_id), group_for_vault(job.vault_id)],
        report={"job_progress": job_id, "fields": progress_fields(shown)},
        key=cache_key(selectors.live_progress_key(job_id)),
        value=_serializer.dumps(live),
        ttl=LIVE_PROGRESS_TTL,
    )
    return {"cancel": job.cancel}


# What a start's push may meet: Redis away, or the database while its fragments render.
PUSH_ERRORS = (redis.exceptions.RedisError, OSError, DatabaseError)
# Threads (each with at most one database connection) that starts and re-rendering reports
# run on, per process (a forked process makes its own: the parent's are not in it).
START_THREADS = 2
_start_threads = ProcessThreadPool(max_workers=START_THREADS, thread_name_prefix="haven-start")


def _start_job(job_id: str, machine_id) -> tuple[dict, Job] | None:
    """Mark a queued or waiting job of ``machine_id`` running, as the view does; the answer
    and the job, or None (the view answers)."""
    job = (
        Job.objects.exclude(operation=Job.Operation.IMPORT)
        .select_related("machine", "vault", "created_by")
        .filter(
            pk=job_id, machine_id=machine_id, status__in=(Job.Status.QUEUED, Job.Status.WAITING)
        )
        .first()
    )
    if job is None or not job_mark_started(job=job, publish=False):
        return None
    return {"cancel": job.cancel_requested_at is not None, "status": job.status}, job


def _fragments(job: Job, groups: set[str]) -> list[tuple[str, str]]:
    return job_fragments(job, only=groups)


_start_job_async = db_in_executor(_start_job, _start_threads)
_fragments_async = db_in_executor(_fragments, _start_threads)


async def start(job_id: str, machine: LiveMachine) -> dict | None:
    """The answer to a start, or None: Django's view answers this one. The fragments are
    rendered only for the groups some socket hears after the start committed (a page
    opened later renders the job running itself; when a schedule starts a whole fleet,
    most job pages are not open)."""
    if rate_count(machine.machine_id) > RATE_LIMIT_PER_MINUTE:
        return None  # the view answers 429
    done = await _start_job_async(job_id, machine.machine_id)
    if done is None:
        return None  # the view answers (and counts the request once more: a rare start)
    answer, job = done
    layer = get_channel_layer()
    try:
        heard = await layer.groups_heard(  # type: ignore[union-attr]
            [job_group(job.pk), group_for_vault(job.vault_id)]
        )
        if heard:
            fragments = await _fragments_async(job, heard)
            await layer.group_send_many(  # type: ignore[union-attr]
                [(group, realtime.fragment_message(group, html)) for group, html in fragments]
            )
    except PUSH_ERRORS:  # best effort, as every push: the page shows the truth on reload
        log.warning("could not push job %s's start", job_id, exc_info=True)
    return answer


def _record_reshaped(job_id: str, machine_id, event: dict) -> bool | None:
    """A report that changes the fragments' shape (the first, a new phase), recorded as the
    view records it (``jobs.services.job_record_progress``: the row written, the fragments
    rendered and pushed); whether the agent should stop, or None (the view answers)."""
    job = (
        Job.objects.exclude(operation=Job.Operation.IMPORT)
        .only(*PROGRESS_FIELDS)
        .filter(pk=job_id, machine_id=machine_id, status=Job.Status.RUNNING)
        .first()
    )
    if job is None:
        return None
    return job_record_progress(job=job, event=event)


_record_reshaped_async = db_in_executor(_record_reshaped, _start_threads)
