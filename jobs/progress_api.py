"""A running job's steady progress report, answered on the server's event loop.

``POST /api/agent/jobs/<id>/progress/`` arrives once a second from every running job: the
portal's busiest endpoint. ``portal.hotpath`` hands it here before Django. The common
case — a running job of the calling machine whose report changes only numbers — is done
without Django's request cycle, a thread, or a database connection:

- the machine from its token (``agents.live_auth``: an in-process cache, kept until a
  token or machine changes standing, 2 s at most after) and
  the per-machine rate limit (one Redis round trip);
- the job from an in-process cache of running jobs (machine, vault, the shape of its last
  report; a start done here puts the job there); a miss loads the row once, in the loop's
  executor;
- the report to the cache where pages read it (``selectors.live_progress``, the same key
  and encoding as ``jobs.services.live.job_progress_publish``) and pushed as the same
  small JSON to the job's and the vault's groups;
- the row written at most every ``PROGRESS_WRITE_SECONDS``, as the view does; that write
  also re-reads the job's status and cancel request. **Bound**: a cancel reaches the agent
  in the answer to a report at most ``PROGRESS_WRITE_SECONDS`` after it was asked (it is
  also sent through the broker at once), and a job that ended stops being served here
  at the next write.

A running job's report that changes the fragments' shape (the first, a new phase) is
recorded as the view records it (row written, fragments rendered — only for the groups
some socket hears), on the start threads below; those that come while one batch is
recorded go together in the next (``record_reshaped``: their jobs read in one query, their
fragments pushed from the loop in one round trip). Everything else returns None and the request goes on to Django's
view, which answers it as before: a job not running or not the machine's, a malformed
body, a machine over its rate limit, Redis or the database unreachable.

``POST /api/agent/jobs/<id>/start/`` of a queued or waiting job of the calling machine is
done here too (``start``): when a schedule fires, every machine on it starts at once, and
200 starts through Django's request cycle (two ORM token checks, the middleware) queued
behind its request limit for seconds. The job is marked running as the view does (as
``jobs.services.job_mark_started``, under the machine's repository fence), the starts
that come while one batch commits together in the next (``start_batch``, one
statement, on a thread of its own: a burst never waits behind renders or the steady
reports' database work). The agent is answered then; the batch's fragments are
rendered afterwards for the groups some socket hears and pushed from the loop, together
(``_push_starts``; the job's first report, which re-renders them anyway, takes the place
of a render not yet begun, and waits for one begun). A start the batch leaves — a
compaction, a machine whose fence someone holds — is done alone as the view does it,
waiting for the fence. Any other start (a job already running or ended, another
machine's) goes to the view.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
from agents.models import Machine
from agents.runtime.protocol import MAX_API_BODY
from jobs import selectors
from jobs.models import Job
from jobs.services.jobs import (
    PROGRESS_WRITE_SECONDS,
    _clean_progress,
    job_mark_started,
    job_record_progress,
)
from jobs.services.live import (
    LIVE_PROGRESS_TTL,
    SHOWN_JOBS,
    job_fragments,
    job_group,
    progress_changes_shape,
    progress_fields,
)
from portal import realtime
from portal.pools import LoopBatches, ProcessThreadPool, cache_key, db_in_executor
from vaults.models import Vault
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


def _remember(job_id: str, job: RunningJob) -> None:
    if len(_jobs) >= JOB_CACHE_ENTRIES:
        for key in list(_jobs)[: JOB_CACHE_ENTRIES // 2]:
            del _jobs[key]
    job.seen = time.monotonic()
    _jobs[job_id] = job


async def _running_job(job_id: str) -> RunningJob | None:
    job = _jobs.get(job_id)
    now = time.monotonic()
    if job is None or now - job.seen > JOB_IDLE_SECONDS:
        job = await _load_running_async(job_id)
        if job is None:
            _jobs.pop(job_id, None)
            return None
        _remember(job_id, job)
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
        push = _start_pushes.get(job_id)
        if (
            push is not None
            and push.task
            and push.task.get_loop() is asyncio.get_running_loop()
            and not _supersede(push)  # this report's fragments show the start too
        ):
            await asyncio.shield(push.task)  # and leave after the start's: it had begun
        _jobs.pop(job_id, None)  # rendered and written below; the row loaded again next
        heard = await _groups_heard(job_id, job.vault_id)
        cancel = await _reshaped((job_id, machine.machine_id, event, heard))
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
# Threads (each with at most one database connection) that re-rendering reports, the
# starts' renders and the starts the batch leaves run on, per process (a forked process
# makes its own: the parent's are not in it).
START_THREADS = 2
_start_threads = ProcessThreadPool(max_workers=START_THREADS, thread_name_prefix="haven-start")
# The one thread per process that commits batches of starts: a burst of starts never waits
# behind renders (nor the steady reports' database work on the loop's executor).
_batch_thread = ProcessThreadPool(max_workers=1, thread_name_prefix="haven-start-batch")
# At most this many starts in one transaction (the rest wait for the next).
START_BATCH_MAX = 100
# The renders of started jobs and of their first reports wait, at most this long, while
# starts are being committed: when a schedule starts a fleet, the starts' answers get the
# interpreter first, and the pages their fragments a moment later.
STARTS_FIRST_SECONDS = 0.25
# Operations whose start the batch leaves to ``job_mark_started`` (a compaction notes
# which points it may move as it starts) and the import, which agents do not start.
BATCH_EXCLUDED = (Job.Operation.COMPACT, Job.Operation.IMPORT)


def start_batch(pairs: list[tuple[str, object]], now: datetime) -> dict[str, RunningJob]:
    """Mark running, in one statement, those of ``pairs`` (job id, machine id) that are
    queued or waiting jobs of that machine, as ``jobs.services.job_mark_started`` does:
    each under its machine's fence (``pruning.repository_fence``: the machine's row locked,
    the job's status read again under it). ``{job id: the running job}`` of those started
    (as the cache of running jobs keeps it: its first report need not read it again); any
    other (not the machine's, not queued or waiting, a compaction, or its
    machine's or job's row locked by someone else right now) is left to the caller.

    The rows are locked in one order (machines, then jobs, each by id) and never waited
    for (``SKIP LOCKED``): a pack deletion holding one machine's fence holds up that
    machine's start alone, and the batch cannot deadlock with a fence or a heart-beat.
    One statement, one round trip (the ORM's transaction took five: on a thread waiting
    for the interpreter at a burst's busiest moment, each was a wait of its own)."""
    quote = connection.ops.quote_name
    jobs, machines = quote(Job._meta.db_table), quote(Machine._meta.db_table)
    field = Job._meta.get_field
    # SQLite has no row locks (it writes one transaction at a time): the same statement
    # without them.
    lock = connection.vendor == "postgresql"
    pair_values = [
        value
        for job_id, machine_id in pairs
        for value in (
            field("id").get_db_prep_value(job_id, connection),
            field("machine").get_db_prep_value(machine_id, connection),
        )
    ]
    startable = (Job.Status.QUEUED.value, Job.Status.WAITING.value)
    at = field("started_at").get_db_prep_value(now, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH wanted (job_id, machine_id) AS (VALUES {', '.join(['(%s, %s)'] * len(pairs))}), "
            f"fenced AS MATERIALIZED (SELECT id FROM {machines} "
            f"WHERE id IN (SELECT machine_id FROM wanted) ORDER BY id"
            f"{' FOR UPDATE SKIP LOCKED' if lock else ''}), "
            f"chosen AS MATERIALIZED (SELECT j.id FROM {jobs} j "
            "JOIN wanted w ON w.job_id = j.id AND w.machine_id = j.machine_id "
            "WHERE j.machine_id IN (SELECT id FROM fenced) AND j.status IN (%s, %s) "
            f"AND j.operation NOT IN ({', '.join(['%s'] * len(BATCH_EXCLUDED))}) "
            f"ORDER BY j.id{' FOR UPDATE OF j SKIP LOCKED' if lock else ''}) "
            f"UPDATE {jobs} SET status = %s, started_at = %s, last_report_at = %s "
            f"FROM chosen WHERE {jobs}.id = chosen.id "
            f"RETURNING {jobs}.id, {jobs}.machine_id, {jobs}.vault_id, {jobs}.operation, "
            f"{jobs}.progress, {jobs}.cancel_requested_at",
            [
                *pair_values,
                *startable,
                *(operation.value for operation in BATCH_EXCLUDED),
                Job.Status.RUNNING.value,
                at,
                at,
            ],
        )
        rows = cursor.fetchall()
    # SQLite gives ids as 32 hex digits: the UUIDs the callers name jobs and groups by.
    to_uuid = field("id").to_python
    progress_of = field("progress").from_db_value
    return {
        str(to_uuid(pk)): RunningJob(
            machine_id=to_uuid(machine_id),
            vault_id=to_uuid(vault_id),
            operation=operation,
            started_at=now,
            progress=progress_of(progress, None, connection) or {},
            row_written_at=now,
            cancel=cancel_at is not None,
        )
        for pk, machine_id, vault_id, operation, progress, cancel_at in rows
    }


_start_batch_async = db_in_executor(start_batch, _batch_thread)


async def _start_together(pairs: list[tuple[str, object]]) -> list[RunningJob | None]:
    started = await _start_batch_async(pairs, timezone.now())
    for job_id, job in started.items():
        _remember(job_id, job)
    if started:
        _push_starts_later({job_id: job.vault_id for job_id, job in started.items()})
    return [started.get(job_id) for job_id, _ in pairs]


# The starts that come while a batch commits go together in the next.
_starts = LoopBatches(_start_together, START_BATCH_MAX)


def _start_job(job_id: str, machine_id) -> RunningJob | None:
    """A start the batch left, as the view does it (``job_mark_started``, under the
    machine's fence, waiting for it): a compaction, or a row someone else held. As
    ``start_batch`` answers, or None (the view answers: not a queued or waiting job of the
    machine)."""
    job = (
        Job.objects.exclude(operation=Job.Operation.IMPORT)
        .filter(
            pk=job_id, machine_id=machine_id, status__in=(Job.Status.QUEUED, Job.Status.WAITING)
        )
        .first()
    )
    if job is None or not job_mark_started(job=job, publish=False):
        return None
    return RunningJob(
        machine_id=job.machine_id,
        vault_id=job.vault_id,
        operation=job.operation,
        started_at=job.started_at,
        progress=job.progress or {},
        row_written_at=job.last_report_at or job.started_at or timezone.now(),
        cancel=job.cancel_requested_at is not None,
    )


@dataclass
class _StartPush:
    task: asyncio.Task | None = None  # the push of the job's batch of starts
    # Set by the job's first report when it re-renders the same fragments before this
    # one's render has begun: this one is not rendered, and the report need not wait
    # for it (in a fleet's burst of starts, most are superseded so).
    superseded: bool = False
    rendering: bool = False  # begun: the first report's fragments go after these


# A started job's push, until it has been sent: the job's first report, if it re-renders,
# supersedes it or waits for it, so the pages never get them out of order.
_start_pushes: dict[str, _StartPush] = {}
# Taken for an instant by the render thread (begin a job's render, unless superseded) and
# the loop (supersede it, unless begun): exactly one of the two happens.
_push_claims = threading.Lock()


def _supersede(push: _StartPush) -> bool:
    """Whether the start's push is superseded (not begun: it never will be); False: it
    has begun, and must be waited for."""
    with _push_claims:
        if not push.rendering:
            push.superseded = True
        return push.superseded


def _fragments(
    wanted: dict[str, set[str]], pushes: dict[str, _StartPush], vault_ids: frozenset = frozenset()
) -> list[tuple[str, str]]:
    """The fragments of each started job of ``wanted`` for the groups some socket hears
    (``{job id: groups}``), in one query, but those superseded by their first report; and
    the Backup center's "something changed" for the subscription of each of ``vault_ids``
    (a job that starts is a state change it shows, as ``job_publish`` tells it), one
    query more per batch."""
    fleet = (
        [
            (realtime.group_for_fleet(subscription_id), realtime.FLEET_CHANGED)
            for subscription_id in Vault.objects.filter(pk__in=vault_ids)
            .order_by()
            .values_list("subscription_id", flat=True)
            .distinct()
        ]
        if vault_ids
        else []
    )
    if not wanted:
        return fleet
    rows = {
        str(job.pk): job
        for job in Job.objects.select_related("machine", "vault", "created_by").filter(
            pk__in=list(wanted)
        )
    }
    fragments = []
    for job_id, groups in wanted.items():
        with _push_claims:
            if pushes[job_id].superseded:
                continue
            pushes[job_id].rendering = True
        job = rows.get(job_id)
        if job is not None:
            fragments.extend(job_fragments(job, only=groups))
    return fragments + fleet


_start_job_async = db_in_executor(_start_job, _start_threads)
_fragments_async = db_in_executor(_fragments, _start_threads)


async def _groups_heard(job_id: str, vault_id) -> set[str] | None:
    """Those of the job's groups some socket hears now; None (render for both, as the
    view does) when Redis cannot say."""
    try:
        return await get_channel_layer().groups_heard(  # type: ignore[union-attr]
            [job_group(job_id), group_for_vault(vault_id)]
        )
    except PUSH_ERRORS:
        return None


def _push_starts_later(vaults: dict[str, object]) -> None:
    """Push the started jobs' fragments (``{job id: vault id}``) once their agents have
    their answers: one task for a batch of starts."""
    pushes = {job_id: _StartPush() for job_id in vaults}
    task = asyncio.get_running_loop().create_task(_push_starts(vaults, pushes))
    for job_id, push in pushes.items():
        push.task = task
        _start_pushes[job_id] = push


async def _push_starts(vaults: dict[str, object], pushes: dict[str, _StartPush]) -> None:
    """The started jobs' fragments, rendered for the groups some socket hears (a page
    opened later renders the job running itself; when a schedule starts a whole fleet,
    most job pages are not open), and the Backup center's "something changed" for their
    subscriptions, after the agents have their answers. A batch of starts
    is one question to Redis, one query, one thread's renders and one round trip of
    pushes, where each start had each of its own: at a burst's busiest moment the loop
    that answers the next starts did them all."""
    layer = get_channel_layer()
    try:
        await asyncio.sleep(0)  # the batch's answers first
        await _starts.quiet(STARTS_FIRST_SECONDS)  # and the next starts' (a burst's)
        groups = {
            job_id: {job_group(job_id), group_for_vault(vault_id)}
            for job_id, vault_id in vaults.items()
        }
        heard = await layer.groups_heard(  # type: ignore[union-attr]
            sorted(set().union(*groups.values()))
        )
        wanted = {job_id: mine & heard for job_id, mine in groups.items() if mine & heard}
        fragments = await _fragments_async(wanted, pushes, frozenset(vaults.values()))
        if fragments:
            await layer.group_send_many(  # type: ignore[union-attr]
                [(group, realtime.fragment_message(group, html)) for group, html in fragments]
            )
    except PUSH_ERRORS:  # best effort, as every push: the page shows the truth on reload
        log.warning("could not push the start of jobs %s", sorted(vaults), exc_info=True)
    finally:
        for job_id, push in pushes.items():
            if _start_pushes.get(job_id) is push:
                del _start_pushes[job_id]


async def start(job_id: str, machine: LiveMachine) -> dict | None:
    """The answer to a start, or None: Django's view answers this one. The start is
    committed with the others waiting (``start_batch``) and answered at once; its
    fragments are pushed afterwards (``_push_starts``)."""
    if rate_count(machine.machine_id) > RATE_LIMIT_PER_MINUTE:
        return None  # the view answers 429
    started = await _starts((job_id, machine.machine_id))
    if started is None:
        # Left by the batch: done alone (or refused: the view answers, and counts the
        # request once more, as for any rare start).
        started = await _start_job_async(job_id, machine.machine_id)
        if started is None:
            return None
        _remember(job_id, started)
        _push_starts_later({job_id: started.vault_id})
    return {"cancel": started.cancel, "status": Job.Status.RUNNING.value}


# A report that re-renders: (job id, machine id, report, the job's groups some socket hears
# or None when Redis could not say).
Reshaped = tuple[str, object, dict, "set[str] | None"]
# At most this many re-rendering reports in one thread call (the rest wait for the next).
RESHAPED_BATCH_MAX = 50


def record_reshaped(items: list[Reshaped]) -> tuple[list[bool | None], list[tuple[str, str]]]:
    """Reports that change the fragments' shape (the first, a new phase), each recorded as
    the view records it (``jobs.services.job_record_progress``: the row written, the
    fragments rendered for the groups some socket hears), their jobs read in one query with
    what the fragments show. Whether each agent should stop (None: not a running job of
    that machine; the view answers it), and the fragments to push, in order: the caller
    sends them from the loop in one round trip. When a schedule starts a fleet, every
    job's first report comes in the same second: each read, render and push of its own
    was a wait of its own on a thread that the starts' answers share the interpreter with."""
    jobs = {
        str(job.pk): job
        for job in SHOWN_JOBS.exclude(operation=Job.Operation.IMPORT).filter(
            pk__in=[job_id for job_id, *_rest in items], status=Job.Status.RUNNING
        )
    }
    answers: list[bool | None] = []
    with realtime.collected() as pushes:
        for job_id, machine_id, event, heard in items:
            job = jobs.get(job_id)
            if job is None or str(job.machine_id) != str(machine_id):
                answers.append(None)
                continue
            try:
                answers.append(job_record_progress(job=job, event=event, heard=heard))
            except PUSH_ERRORS as exc:  # this one goes to the view; the others stay done
                log.info(
                    "job %s's report left to the view: %s: %s", job_id, type(exc).__name__, exc
                )
                answers.append(None)
    return answers, pushes


_record_reshaped_async = db_in_executor(record_reshaped, _start_threads)


async def _record_reshaped_together(items: list[Reshaped]) -> list[bool | None]:
    await _starts.quiet(STARTS_FIRST_SECONDS)
    answers, pushes = await _record_reshaped_async(items)
    if pushes:
        try:
            await get_channel_layer().group_send_many(  # type: ignore[union-attr]
                [(group, realtime.fragment_message(group, html)) for group, html in pushes]
            )
        except PUSH_ERRORS:  # best effort, as every push: the page shows the truth on reload
            log.warning(
                "could not push the reports of jobs %s", [i[0] for i in items], exc_info=True
            )
    return answers


# The re-rendering reports that come while a batch is recorded go together in the next.
_reshaped = LoopBatches(_record_reshaped_together, RESHAPED_BATCH_MAX)
