"""The tasks an agent runs, by name. The portal sends them with
``agents.dispatch.send_after_commit(machine, "<name>", **kwargs)``.

To add a task, write a function taking the ``AgentContext`` first and keyword arguments
(JSON values: ids, paths, options) after it, and register it::

    @agent_task("haven.agent.backup")
    def backup(ctx: AgentContext, *, job_id: str, sources: list[str]) -> dict: ...

The worker wraps each registered function in a Celery task that verifies the portal's
signature before calling it (``agents.runtime.tasksig``); an unsigned or forged message
never reaches the function. Modules holding more tasks are listed in ``TASK_MODULES``;
the worker imports them before it starts consuming.
"""

from __future__ import annotations

import importlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agents.runtime import host, protocol
from agents.runtime.config import Registration, Settings
from agents.runtime.portal_api import PortalClient
from agents.runtime.version import __version__

log = logging.getLogger("haven.agent.tasks")

PING = protocol.PING_TASK

# Modules with more ``@agent_task`` functions, imported by the worker before it starts.
TASK_MODULES: list[str] = [
    "agents.runtime.jobs.tasks",  # haven.agent.backup / .seed.export / .verify / .drill / .compact
    # / .cancel / .policy
    "agents.runtime.recovery.tasks",  # haven.agent.recovery.*
]


def load_task_modules() -> list[str]:
    """Import ``TASK_MODULES``; returns the problems (a broken module must not stop the
    worker from serving the others, so it is logged, not raised)."""
    problems = []
    for module in TASK_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:
            problems.append(f"{module}: {exc}")
            log.error("could not load agent tasks from %s: %s", module, exc)
    return problems


@dataclass(frozen=True)
class AgentTask:
    name: str
    func: Callable
    # Keep the result in the broker's result store (under this machine's key prefix).
    store_result: bool = False


REGISTRY: dict[str, AgentTask] = {}


@dataclass
class AgentContext:
    """What a task may use: who this machine is, its settings, the portal client."""

    registration: Registration
    settings: Settings
    portal: PortalClient | None = None
    extra: dict = field(default_factory=dict)

    def require_portal(self) -> PortalClient:
        """The portal client, which every task that reports back needs (the worker always
        sets it; a context without one is a test's or an embedder's mistake)."""
        if self.portal is None:
            raise RuntimeError("this agent task reports to the portal, but no client was given")
        return self.portal


def agent_task(name: str, *, store_result: bool = False):
    """Register ``func`` as the agent task ``name`` (names start with ``haven.agent.``)."""
    if not name.startswith(protocol.TASK_PREFIX):
        raise ValueError(f"agent task names start with {protocol.TASK_PREFIX!r} (got {name!r})")

    def decorator(func: Callable) -> Callable:
        if name in REGISTRY and REGISTRY[name].func is not func:
            raise ValueError(f"agent task {name!r} is registered twice")
        REGISTRY[name] = AgentTask(name=name, func=func, store_result=store_result)
        return func

    return decorator


@agent_task(PING, store_result=True)
def ping(ctx: AgentContext, *, note: str = "") -> dict:
    """Answer with who and where this agent is: proves the signed path end to end."""
    log.info("pong (note=%r)", note)
    return {
        "pong": True,
        "note": note,
        "machine_id": ctx.registration.machine_id,
        "hostname": socket.gethostname(),
        "os": host.os_name(),
        "agent_version": __version__,
        "time": datetime.now(UTC).isoformat(),
    }
