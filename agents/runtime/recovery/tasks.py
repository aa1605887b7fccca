"""The ``haven.agent.recovery.*`` agent tasks: the portal's Recover Data wizard asks, the
agent answers from the encrypted repository. ``agents.runtime.tasks.TASK_MODULES`` lists
this module.

Questions (recovery points, a folder, a name search, a file's versions) carry a
``request_id``; the answer goes back to ``POST /api/agent/recovery/answers/<request_id>/``,
which the portal keeps in its cache for a minute or two and never in its database. A
question's task returns only ``{"ok": ...}``, so no file name lands in a result store.

Restores and downloads are jobs (``job_id``): the job protocol of the jobs app (fetch, start,
progress with the portal's cancel in the answer, result; docs/jobs.md). A restore runs in a
thread of its own, so this machine's (single) worker keeps answering questions meanwhile, and
``haven.agent.cancel`` reaches it (it registers in ``agents.runtime.jobs.backup.RUNNING``).
The selection and the target folder come in the signed task message, not from the job, so the
portal's database does not hold them.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time

from agents.runtime.recovery import ops
from agents.runtime.recovery import source as src
from agents.runtime.tasks import AgentContext, agent_task

log = logging.getLogger("haven.agent.recovery")

POINTS = "haven.agent.recovery.points"
BROWSE = "haven.agent.recovery.browse"
SEARCH = "haven.agent.recovery.search"
VERSIONS = "haven.agent.recovery.versions"
RESTORE = "haven.agent.recovery.restore"
DOWNLOAD = "haven.agent.recovery.download"

MAX_LISTED = 5000
REPO_TTL = 300.0  # an opened repository (keys, index) is reused for browsing this long
ENGINE_STATUS = {
    "completed": "completed",
    "completed_with_warnings": "warning",
    "cancelled": "cancelled",
}
_opened: dict[str, tuple[float, object]] = {}
_opened_lock = threading.Lock()


# -- opening ----------------------------------------------------------------------------------
def _source(ctx: AgentContext, source_machine_id: str | None) -> src.Source:
    source = src.resolve_source(
        registration=ctx.registration, portal=ctx.portal, machine=source_machine_id or None
    )
    if source.own and ctx.portal is not None and "open_store" not in ctx.extra:
        src.renew_own_grant(ctx.registration, ctx.portal, save=False)
        source.grant = ctx.registration.grant
    return source


def _store(ctx: AgentContext, source: src.Source):
    if "open_store_for" in ctx.extra:
        return ctx.extra["open_store_for"](source.machine_id)
    if source.own and "open_store" in ctx.extra:
        return ctx.extra["open_store"]()
    return src.open_store(source, ctx.settings)


def open_repository(ctx: AgentContext, source_machine_id: str | None, *, cached: bool = True):
    source = _source(ctx, source_machine_id)
    key = source.machine_id
    if cached:
        with _opened_lock:
            hit = _opened.get(key)
            if hit and hit[0] > time.monotonic():
                return hit[1], source
    secret = src.saved_passphrase(source, ctx.settings, ctx.extra)
    if not secret:
        raise src.passphrase_needed(source)
    repo = src.open_repository(_store(ctx, source), secret)
    if cached:
        with _opened_lock:
            _opened[key] = (time.monotonic() + REPO_TTL, repo)
    return repo, source


def forget_opened() -> None:
    with _opened_lock:
        _opened.clear()


# -- questions --------------------------------------------------------------------------------
def _failure(exc: Exception) -> dict:
    from agents.runtime.engine import WrongPassphrase

    code = getattr(exc, "code", None) or exc.__class__.__name__
    if isinstance(exc, WrongPassphrase):
        code = "wrong_passphrase"
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
        ctx.portal.post(f"recovery/answers/{request_id}/", body)
    except Exception as exc:
        log.warning("could not deliver the answer to request %s: %s", request_id, exc)
        return {"ok": False, "delivered": False}
    return {"ok": body["ok"]}


@agent_task(POINTS)
def points(ctx: AgentContext, *, request_id: str, source_machine_id: str = "") -> dict:
    """The recovery points of ``source_machine_id`` (this machine when empty)."""

    def compute():
        repo, source = open_repository(ctx, source_machine_id)
        return {"machine": source.machine_name, "recovery_points": ops.recovery_points(repo)}

    return _answer(ctx, request_id, compute)


@agent_task(BROWSE)
def browse(
    ctx: AgentContext,
    *,
    request_id: str,
    recovery_point: str,
    path: str = "/",
    source_machine_id: str = "",
) -> dict:
    """One folder of a recovery point."""

    def compute():
        repo, _ = open_repository(ctx, source_machine_id)
        listing = ops.ls(repo, recovery_point=recovery_point, path=path or "/")
        listing["truncated"] = len(listing["entries"]) > MAX_LISTED
        listing["entries"] = listing["entries"][:MAX_LISTED]
        return listing

    return _answer(ctx, request_id, compute)


@agent_task(SEARCH)
def search(
    ctx: AgentContext,
    *,
    request_id: str,
    pattern: str,
    recovery_points: list[str] | None = None,
    limit: int = ops.DEFAULT_FIND_LIMIT,
    source_machine_id: str = "",
) -> dict:
    """File names matching ``pattern`` across recovery points."""

    def compute():
        repo, _ = open_repository(ctx, source_machine_id)
        return ops.find(
            repo,
            pattern=pattern,
            recovery_points=recovery_points or None,
            limit=min(int(limit), ops.DEFAULT_FIND_LIMIT),
        )

    return _answer(ctx, request_id, compute)


@agent_task(VERSIONS)
def versions(ctx: AgentContext, *, request_id: str, path: str, source_machine_id: str = "") -> dict:
    """Every version of one file across recovery points."""

    def compute():
        repo, _ = open_repository(ctx, source_machine_id)
        return ops.versions(repo, path=path)

    return _answer(ctx, request_id, compute)


# -- jobs -------------------------------------------------------------------------------------
def _begin(portal, job_id: str) -> bool:
    job = portal.get(f"jobs/{job_id}/")
    if job.get("cancel") or job.get("status") not in ("queued", "waiting", "running"):
        log.info("job %s is %s; nothing to do", job_id, job.get("status"))
        return False
    started = portal.post(f"jobs/{job_id}/start/")
    return not (
        started.get("cancel") and started.get("status") not in ("queued", "waiting", "running")
    )


def _explain(exc: Exception) -> str:
    from agents.runtime.engine import WrongPassphrase

    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, WrongPassphrase):
        return f"Nothing was restored: the passphrase known to this machine is wrong: {text}"
    if isinstance(exc, OSError):
        return f"The agent could not write: {exc.strerror or text} {exc.filename or ''}".strip()
    return text[0].upper() + text[1:]


def run_restore_job(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    paths: list[str],
    target: str,
    on_conflict: str,
    restore_permissions: bool,
    source_machine_id: str = "",
    max_per_second: float = 1.0,
    heartbeat: float = 2.0,
) -> dict:
    """Run restore job ``job_id`` with live progress; returns the result posted."""
    from agents.runtime.jobs.backup import RUNNING, _post_result
    from agents.runtime.jobs.sink import PortalSink

    portal = ctx.portal
    if not _begin(portal, job_id):
        return {"status": "skipped"}
    cancel = threading.Event()
    RUNNING[job_id] = cancel
    sink = PortalSink(
        lambda event: portal.post(f"jobs/{job_id}/progress/", event),
        max_per_second=max_per_second,
        heartbeat=heartbeat,
        cancel=cancel,
    )
    try:
        sink.start()
        repo, _ = open_repository(ctx, source_machine_id, cached=False)  # before any write
        res = ops.restore(
            repo,
            recovery_point=recovery_point,
            paths=paths,
            target=target or "/",
            on_conflict=on_conflict,
            restore_permissions=restore_permissions,
            sink=sink,
            cancel=cancel,
        )
        sink.close()
        status = ENGINE_STATUS.get(res["status"], "failed")
        problems = [
            {"path": f["path"], "reason": f["reason"]} for f in res["failed"] + res["warnings"]
        ]
        payload = {
            "status": status,
            "error": res["message"][0].upper() + res["message"][1:]
            if status in ("cancelled",) or res["failed"]
            else "",
            "warnings": problems[:1000],
            "warning_count": len(problems),
            "stats": {
                "files": res["files"],
                "bytes": res["bytes"],
                "stored_bytes": res["bytes"],
                "skipped": res["skipped"],
                "failed": len(res["failed"]),
            },
        }
    except Exception as exc:
        log.info("restore job %s failed: %s", job_id, exc)
        payload = {"status": "failed", "error": _explain(exc)}
    finally:
        sink.close()
        RUNNING.pop(job_id, None)
    _post_result(portal, job_id, payload)
    return payload


def _in_background(ctx: AgentContext, name: str, func, **kwargs) -> dict:
    if ctx.extra.get("inline"):
        return func(ctx, **kwargs)
    # Not a daemon: a worker asked to stop waits for the restore to finish its files.
    threading.Thread(target=func, args=(ctx,), kwargs=kwargs, name=name).start()
    return {"started": True}


@agent_task(RESTORE)
def restore(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    paths: list[str],
    target: str = "/",
    on_conflict: str = "copy",
    restore_permissions: bool = False,
    source_machine_id: str = "",
) -> dict:
    """Restore ``paths`` of ``recovery_point`` under ``target`` ("/" = original location)."""
    return _in_background(
        ctx,
        f"haven-restore-{job_id[:8]}",
        run_restore_job,
        job_id=job_id,
        recovery_point=recovery_point,
        paths=list(paths),
        target=target,
        on_conflict=on_conflict,
        restore_permissions=bool(restore_permissions),
        source_machine_id=source_machine_id,
    )


def upload(portal, path: str, fileobj, size: int) -> dict:
    """Stream ``fileobj`` to the portal's agent API (``PUT``-like raw body)."""
    if hasattr(portal, "upload"):
        return portal.upload(path, fileobj, size)
    from agents.runtime.portal_api import PortalRefused, PortalUnreachable

    response = portal.session.post(
        portal.url(path),
        data=fileobj,
        headers={"Content-Type": "application/gzip", "Content-Length": str(size)},
        timeout=(10, 300),
    )
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code >= 500:
        raise PortalUnreachable(f"the portal answered {response.status_code} to the upload")
    if response.status_code >= 400:
        raise PortalRefused(
            response.status_code, str(body.get("error", "error")), str(body.get("message", ""))
        )
    return body


def run_download_job(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    paths: list[str],
    max_bytes: int = ops.DOWNLOAD_MAX_BYTES,
    source_machine_id: str = "",
) -> dict:
    """Build the archive of a few files and stream it to the portal for the browser."""
    from agents.runtime.jobs.backup import _post_result

    portal = ctx.portal
    if not _begin(portal, job_id):
        return {"status": "skipped"}
    try:
        repo, _ = open_repository(ctx, source_machine_id)
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            made = ops.download_archive(
                repo,
                recovery_point=recovery_point,
                paths=paths,
                out=spool,
                max_bytes=min(int(max_bytes), ops.DOWNLOAD_MAX_BYTES),
            )
            size = spool.tell()
            spool.seek(0)
            upload(portal, f"recovery/downloads/{job_id}/", spool, size)
        failed = made["failed"]
        payload = {
            "status": "warning" if failed else "completed",
            "error": f"{len(failed)} file(s) could not be read and were left out" if failed else "",
            "warnings": failed[:1000],
            "warning_count": len(failed),
            "stats": {"files": made["files"], "bytes": made["bytes"], "stored_bytes": size},
        }
    except Exception as exc:
        log.info("download job %s failed: %s", job_id, exc)
        payload = {"status": "failed", "error": _explain(exc)}
    _post_result(portal, job_id, payload)
    return payload


@agent_task(DOWNLOAD)
def download(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    paths: list[str],
    max_bytes: int = ops.DOWNLOAD_MAX_BYTES,
    source_machine_id: str = "",
) -> dict:
    """A small archive of ``paths`` for the portal's Download button."""
    return run_download_job(
        ctx,
        job_id=job_id,
        recovery_point=recovery_point,
        paths=list(paths),
        max_bytes=max_bytes,
        source_machine_id=source_machine_id,
    )
