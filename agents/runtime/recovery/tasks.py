"""The ``haven.agent.recovery.*`` agent tasks: the portal's Recover Data wizard asks, the
agent answers from the encrypted repository. ``agents.runtime.tasks.TASK_MODULES`` lists
this module.

Questions (recovery points, a folder, a name search, a file's versions) carry a
``request_id``; the answer goes back to ``POST /api/agent/recovery/answers/<request_id>/``,
which the portal keeps in its cache for a minute or two and never in its database. A
question's task returns only ``{"ok": ...}``, so no file name lands in a result store.

``source_region`` (``protocol.REGIONS``; empty = primary) says which copy to read: the
secondary one is Cross Region Restore (recovery.source).

Restores and downloads are jobs (``job_id``, ``recovery.jobs``, run by the one job runner).
A restore runs in its task, which is acknowledged only when the restore is done: the worker
has a few pool threads (``agents.runtime.worker``), so it keeps answering questions
meanwhile and ``haven.agent.cancel`` reaches the restore. If the agent dies mid-restore, the
job's journal in the result outbox makes the next worker report it Failed with what was
kept (``jobs.outbox``); the message, already taken, is not run twice (tasks-seen.json).
"""

from __future__ import annotations

import logging

from agents.runtime import protocol as wire
from agents.runtime.engine import WrongPassphrase
from agents.runtime.recovery import ops
from agents.runtime.recovery.jobs import run_download_job, run_restore_job
from agents.runtime.recovery.source import RecoveryError, forget_opened, open_for_task
from agents.runtime.tasks import AgentContext, agent_task

log = logging.getLogger("haven.agent.recovery")

MAX_LISTED = 5000


# -- questions --------------------------------------------------------------------------------
def _failure(exc: Exception) -> dict:
    if isinstance(exc, WrongPassphrase):
        code = wire.ANSWER_WRONG_PASSPHRASE
    elif isinstance(exc, RecoveryError):
        code = exc.code
    else:  # named for the agent's log; the wizard shows the message
        code = exc.__class__.__name__
    message = str(exc) or exc.__class__.__name__
    return {"ok": False, "code": str(code), "message": message[0].upper() + message[1:]}


def _answer(ctx: AgentContext, request_id: str, compute) -> dict:
    try:
        body = {"ok": True, "result": compute()}
    except Exception as exc:  # every failure is an answer the wizard shows
        log.info("recovery request %s failed: %s", request_id, exc)
        forget_opened()
        body = _failure(exc)
    try:
        ctx.require_portal().post(f"recovery/answers/{request_id}/", body)
    except Exception as exc:
        log.warning("could not deliver the answer to request %s: %s", request_id, exc)
        return {"ok": False, "delivered": False}
    return {"ok": body["ok"]}


@agent_task(wire.RECOVERY_POINTS_TASK)
def points(
    ctx: AgentContext, *, request_id: str, source_machine_id: str = "", source_region: str = ""
) -> dict:
    """The recovery points of ``source_machine_id`` (this machine when empty)."""

    def compute():
        repo, source = open_for_task(ctx, source_machine_id, region=source_region)
        return {"machine": source.machine_name, "recovery_points": ops.recovery_points(repo)}

    return _answer(ctx, request_id, compute)


@agent_task(wire.BROWSE_TASK)
def browse(
    ctx: AgentContext,
    *,
    request_id: str,
    recovery_point: str,
    path: str = "/",
    source_machine_id: str = "",
    source_region: str = "",
) -> dict:
    """One folder of a recovery point."""

    def compute():
        repo, _ = open_for_task(ctx, source_machine_id, region=source_region)
        listing = ops.ls(repo, recovery_point=recovery_point, path=path or "/")
        listing["truncated"] = len(listing["entries"]) > MAX_LISTED
        listing["entries"] = listing["entries"][:MAX_LISTED]
        return listing

    return _answer(ctx, request_id, compute)


@agent_task(wire.SEARCH_TASK)
def search(
    ctx: AgentContext,
    *,
    request_id: str,
    pattern: str,
    recovery_points: list[str] | None = None,
    limit: int = ops.DEFAULT_FIND_LIMIT,
    source_machine_id: str = "",
    source_region: str = "",
) -> dict:
    """File names matching ``pattern`` across recovery points."""

    def compute():
        repo, _ = open_for_task(ctx, source_machine_id, region=source_region)
        return ops.find(
            repo,
            pattern=pattern,
            recovery_points=recovery_points or None,
            limit=min(int(limit), ops.DEFAULT_FIND_LIMIT),
        )

    return _answer(ctx, request_id, compute)


@agent_task(wire.VERSIONS_TASK)
def versions(
    ctx: AgentContext,
    *,
    request_id: str,
    path: str,
    source_machine_id: str = "",
    source_region: str = "",
) -> dict:
    """Every version of one file across recovery points."""

    def compute():
        repo, _ = open_for_task(ctx, source_machine_id, region=source_region)
        return ops.versions(repo, path=path)

    return _answer(ctx, request_id, compute)


# -- jobs -------------------------------------------------------------------------------------
@agent_task(wire.RESTORE_TASK)
def restore(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    paths: list[str],
    target: str = "/",
    on_conflict: str = wire.CONFLICT_COPY,
    restore_permissions: bool = False,
    source_machine_id: str = "",
    source_region: str = "",
) -> dict:
    """Restore ``paths`` of ``recovery_point`` under ``target`` ("/" = original location)."""
    return run_restore_job(
        ctx,
        job_id=job_id,
        recovery_point=recovery_point,
        paths=list(paths),
        target=target,
        on_conflict=on_conflict,
        restore_permissions=bool(restore_permissions),
        source_machine_id=source_machine_id,
        source_region=source_region,
    )


@agent_task(wire.DOWNLOAD_TASK)
def download(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    paths: list[str],
    max_bytes: int = wire.DOWNLOAD_MAX_BYTES,
    source_machine_id: str = "",
    source_region: str = "",
) -> dict:
    """A small archive of ``paths`` for the portal's Download button."""
    return run_download_job(
        ctx,
        job_id=job_id,
        recovery_point=recovery_point,
        paths=list(paths),
        max_bytes=max_bytes,
        source_machine_id=source_machine_id,
        source_region=source_region,
    )
