"""Agent tasks of the jobs app. ``agents.runtime.tasks.TASK_MODULES`` lists this module.

Where the backup gets its secrets: the store opens the machine's storage grant
(``registration.grant``); the passphrase comes from ``ctx.extra["passphrase"]``, else the
file named by ``settings.passphrase_file`` or ``$HAVEN_AGENT_PASSPHRASE_FILE``, else
``passphrase`` in the agent's config directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from agents.runtime.jobs import backup as backup_job
from agents.runtime.jobs import policy as policy_store
from agents.runtime.tasks import AgentContext, agent_task

BACKUP = "haven.agent.backup"
CANCEL = "haven.agent.cancel"
POLICY = "haven.agent.policy"


def passphrase_for(ctx: AgentContext) -> str:
    from agents.runtime.config import config_dir
    from agents.runtime.passphrase import read_file

    if ctx.extra.get("passphrase"):
        return ctx.extra["passphrase"]
    candidates = [
        getattr(ctx.settings, "passphrase_file", ""),
        os.environ.get("HAVEN_AGENT_PASSPHRASE_FILE", ""),
        str(config_dir() / "passphrase"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return read_file(Path(candidate))
    raise backup_job.JobAborted(
        "The agent has no encryption passphrase for scheduled and portal-started backups. "
        "Save it on the machine with haven-agent configure --passphrase-file FILE."
    )


def _open_store(ctx: AgentContext):
    if "open_store" in ctx.extra:
        return ctx.extra["open_store"]()
    from agents.runtime.checks import open_store

    return open_store(
        ctx.registration.grant,
        proxies=ctx.settings.proxies(),
        bandwidth_limit=getattr(ctx.settings, "bandwidth_limit", 0),
    )


def _cache_dir(ctx: AgentContext) -> Path:
    if "cache_dir" in ctx.extra:
        return Path(ctx.extra["cache_dir"])
    return Path(ctx.settings.cache_path)


@agent_task(BACKUP)
def backup(ctx: AgentContext, *, job_id: str) -> dict:
    """Back up this machine for portal job ``job_id`` (its policy comes from the portal)."""
    return backup_job.run_backup_job(
        job_id,
        portal=ctx.portal,
        open_store=lambda: _open_store(ctx),
        passphrase=lambda: passphrase_for(ctx),
        cache_dir=_cache_dir(ctx),
        pack_size=backup_job.pack_size_for(getattr(ctx.settings, "bandwidth_limit", 0)),
    )


@agent_task(CANCEL)
def cancel(ctx: AgentContext, *, job_id: str) -> dict:
    """Stop ``job_id`` if it runs in this process. (A busy solo worker gets the cancel from
    the answer to its next progress report instead.)"""
    return {"cancelled": backup_job.cancel_job(job_id)}


@agent_task(POLICY)
def apply(ctx: AgentContext, *, policy: dict, version: int, spec_hash: str) -> dict:
    """Store the policy the portal pushed and confirm it."""
    from agents.runtime.config import config_dir

    return policy_store.apply_policy(
        config_dir(), ctx.portal, policy=policy, version=version, spec_hash=spec_hash
    )
