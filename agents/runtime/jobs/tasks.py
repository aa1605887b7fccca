"""Agent tasks of the jobs app. ``agents.runtime.tasks.TASK_MODULES`` lists this module.

Where the backup gets its secrets: the store opens the machine's storage grant
(``registration.grant``); the passphrase is this machine's saved one
(``passphrase.saved_passphrase``: ``ctx.extra``, the configured file, the environment, the
config directory).
"""

from __future__ import annotations

from pathlib import Path

from agents.runtime import config, storage_grant, throttling
from agents.runtime import protocol as wire
from agents.runtime.jobs import backup as backup_job
from agents.runtime.jobs import compact as compact_job
from agents.runtime.jobs import drill as drill_job
from agents.runtime.jobs import policy as policy_store
from agents.runtime.jobs import seed_export as seed_export_job
from agents.runtime.jobs import verify as verify_job
from agents.runtime.jobs.runner import JobAborted, cancel_job
from agents.runtime.passphrase import saved_passphrase
from agents.runtime.tasks import AgentContext, agent_task

NO_PASSPHRASE = (
    "The agent has no encryption passphrase for scheduled and portal-started backups. "
    "Save it on the machine with haven-agent configure --passphrase-file FILE."
)


def passphrase_for(ctx: AgentContext) -> str:
    secret = saved_passphrase(ctx.settings, ctx.extra)
    if not secret:
        raise JobAborted(NO_PASSPHRASE)
    return secret


def open_store(ctx: AgentContext):
    """This machine's store, through its grant, proxy and bandwidth limit."""
    if "open_store" in ctx.extra:
        return ctx.extra["open_store"]()
    return storage_grant.open_with_settings(ctx.registration.grant, ctx.settings)


def _cache_dir(ctx: AgentContext) -> Path:
    if "cache_dir" in ctx.extra:
        return Path(ctx.extra["cache_dir"])
    return Path(ctx.settings.cache_path)


def _job_context(ctx: AgentContext) -> dict:
    """What every job kind that reads or writes this machine's repository is run with: the
    portal client, the storage, the passphrase (read when the job needs it), the cache."""
    return {
        "portal": ctx.require_portal(),
        "open_store": lambda: open_store(ctx),
        "passphrase": lambda: passphrase_for(ctx),
        "cache_dir": _cache_dir(ctx),
    }


def _slowest_limit(ctx: AgentContext) -> int:
    """The lowest bandwidth (bytes per second, 0: none) the backup may run at: packs hold
    about a second of it, so a switch to the slower rate takes effect within a second."""
    limits = [
        getattr(ctx.settings, "bandwidth_limit", 0),
        throttling.slowest_bytes_per_second(
            throttling.applied_schedule(config.config_dir(), config.POLICY_FILE)
        ),
    ]
    return min((limit for limit in limits if limit), default=0)


@agent_task(wire.BACKUP_TASK)
def backup(ctx: AgentContext, *, job_id: str) -> dict:
    """Back up this machine for portal job ``job_id`` (its policy comes from the portal)."""
    return backup_job.run_backup_job(
        job_id,
        **_job_context(ctx),
        pack_size=backup_job.pack_size_for(_slowest_limit(ctx)),
    )


@agent_task(wire.SEED_EXPORT_TASK)
def seed_export(ctx: AgentContext, *, job_id: str) -> dict:
    """Write this machine's first backup into the seed staging folder for portal job
    ``job_id`` (an Offline policy's offline backup to disk; nothing is uploaded)."""
    registration = ctx.registration
    return seed_export_job.run_seed_export_job(
        job_id,
        **_job_context(ctx),
        identity={
            "vault_id": registration.vault_id,
            "vault_name": registration.vault_name,
            "machine_id": registration.machine_id,
            "machine_name": registration.machine_name,
        },
    )


@agent_task(wire.VERIFY_TASK)
def verify(ctx: AgentContext, *, job_id: str) -> dict:
    """Read back and authenticate this machine's backup data for portal job ``job_id``."""
    return verify_job.run_verify_job(
        job_id,
        **_job_context(ctx),
    )


@agent_task(wire.COMPACT_TASK)
def compact(ctx: AgentContext, *, job_id: str) -> dict:
    """Compact this machine's repository for portal job ``job_id``: rewrite the live chunks
    of wasteful packs into new ones and report them (the portal deletes the old packs)."""
    return compact_job.run_compact_job(
        job_id,
        **_job_context(ctx),
        pack_size=backup_job.pack_size_for(_slowest_limit(ctx)),
    )


@agent_task(wire.DRILL_TASK)
def drill(
    ctx: AgentContext,
    *,
    job_id: str,
    recovery_point: str,
    source_machine_id: str = "",
    sample: str = wire.DRILL_SAMPLE,
    percent: float = wire.DRILL_DEFAULT_PERCENT,
    cap_bytes: int = wire.DRILL_DEFAULT_CAP_MB * 1024 * 1024,
    scratch: str = "",
) -> dict:
    """Restore drill ``job_id``: restore a sample of ``recovery_point`` (of
    ``source_machine_id``'s backups, or this machine's) into ``scratch``, compare, delete."""
    return drill_job.run_drill_job(
        ctx,
        job_id=job_id,
        recovery_point=recovery_point,
        source_machine_id=source_machine_id,
        sample=sample,
        percent=percent,
        cap_bytes=cap_bytes,
        scratch=scratch,
    )


@agent_task(wire.CANCEL_TASK)
def cancel(ctx: AgentContext, *, job_id: str) -> dict:
    """Stop ``job_id`` if it runs in this process (in another of the worker's pool threads);
    the answer to the job's next progress report carries the cancel too."""
    return {"cancelled": cancel_job(job_id)}


@agent_task(wire.POLICY_TASK)
def apply(ctx: AgentContext, *, policy: dict, version: int, spec_hash: str) -> dict:
    """Store the policy the portal pushed and confirm it (never one older than applied)."""
    try:
        return policy_store.apply_policy(
            config.config_dir(),
            ctx.require_portal(),
            policy=policy,
            version=version,
            spec_hash=spec_hash,
            machine_id=ctx.registration.machine_id,
        )
    except policy_store.PolicyOutdated as exc:
        policy_store.log.error("REFUSED %s", exc)
        raise
