"""``haven-agent worker``: a Celery worker that consumes only this machine's queue.

Isolation rests on three things (RECIPES.md, "Redis and Celery"):

- the machine's own Redis ACL user, made at registration, which may touch only
  ``agent.<machine id>`` keys and channels; hence no gossip, mingle, heartbeat events,
  remote control or task events (they all need shared keys), per-machine ``unacked*`` keys
  and a per-machine result key prefix;
- every task message is signed by the portal and verified here before it runs
  (``agents.runtime.tasksig``), so an agent that reaches the broker cannot make another run
  anything; a message is run only before its signed expiry and only once (its task id is
  remembered in ``tasks-seen.json`` in the config folder), so a captured one cannot be
  replayed;
- ``acks_late`` with a prefetch of one: a message is removed only after its task ran, so
  a broker restart or a killed worker loses nothing queued (it is delivered again).

A pool of ``POOL_THREADS`` threads runs the tasks, so a long restore or backup (each
acknowledged only when done) leaves slots for the Recover Data questions and a cancel.

A daemon thread posts a heartbeat to the portal about once a minute; when the portal
answers, it also posts the job results waiting in the outbox (``jobs.outbox``). When the
worker starts, jobs a killed worker left unfinished are reported Failed through it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from datetime import UTC, datetime, timedelta

from celery import Celery, Task
from celery.exceptions import SecurityWarning
from kombu import Exchange, Queue

from agents.runtime import host, redis_transport
from agents.runtime.config import Registration, Settings, config_dir
from agents.runtime.jobs.outbox import Outbox, outbox_for_cache
from agents.runtime.portal_api import PortalClient, PortalError, PortalRefused
from agents.runtime.storage_grant import renew_grant
from agents.runtime.tasks import REGISTRY, AgentContext, load_task_modules
from agents.runtime.tasksig import AUTH_KWARG, SEEN_TASKS_FILE, SeenTasks, TaskRefused, verify_task
from agents.runtime.version import __version__

log = logging.getLogger("haven.agent.worker")

HEARTBEAT_SECONDS = 60.0
GRANT_RENEW_BEFORE = timedelta(hours=6)
# With acks_late a task still running when this elapses is delivered again; backups may
# run for hours, so be generous (a crashed worker's task comes back after this time).
VISIBILITY_TIMEOUT = 6 * 3600
POOL_THREADS = 4


def is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def celery_config(registration: Registration) -> dict:
    queue = registration.queue
    transport_options = dict(registration.broker_transport_options)
    if is_redis(registration.broker_url):
        transport_options.setdefault("visibility_timeout", VISIBILITY_TIMEOUT)
    conf = {
        "broker_url": registration.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # reconnect forever after a broker restart
        "task_default_queue": queue,
        "task_queues": [Queue(queue, Exchange(queue, type="direct"), routing_key=queue)],
        "task_create_missing_queues": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "task_ignore_result": True,
        "accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "enable_utc": True,
    }
    if is_redis(registration.broker_url):
        # kombu's Redis transport but for a mutex without Lua, which the machine's broker
        # user may not run (agents/runtime/redis_transport.py)
        conf["broker_transport"] = redis_transport.TRANSPORT
        conf["result_backend"] = registration.broker_url
        conf["result_backend_transport_options"] = {
            "global_keyprefix": registration.result_key_prefix
        }
        conf["result_expires"] = 24 * 3600
    return conf


class SignedTask(Task):
    """Verifies the portal's signature, the message's expiry and that its id was never run
    before running; refuses and logs otherwise."""

    abstract = True
    registration: Registration | None = None
    seen: SeenTasks | None = None

    def __call__(self, *args, **kwargs):
        registration, seen = self.registration, self.seen
        request = self.request
        try:
            if registration is None or seen is None:
                raise TaskRefused("the worker has no registration loaded")
            expires = verify_task(
                task=self.name,
                task_id=str(request.id),
                args=args,
                kwargs=kwargs,
                machine_id=registration.machine_id,
                public_key_b64=registration.portal_public_key,
            )
            # Remembered before it runs: a task that crashed the worker is not run again.
            seen.start(task=self.name, task_id=str(request.id), expires=expires)
        except TaskRefused as exc:
            log.error("REFUSED %s", exc)
            raise
        kwargs.pop(AUTH_KWARG, None)
        return super().__call__(*args, **kwargs)


def _make_runner(agent_task, context: AgentContext):
    def run(self, *args, **kwargs):
        return agent_task.func(context, *args, **kwargs)

    run.__name__ = agent_task.func.__name__
    run.__doc__ = agent_task.func.__doc__
    return run


def make_app(registration: Registration, settings: Settings, portal=None) -> Celery:
    load_task_modules()
    # No fix-ups: Celery's Django fix-up would import Django (and the portal's apps) when
    # the environment names a settings module, as a portal's host or a test run does.
    app = Celery(f"haven-agent-{registration.machine_id}", set_as_current=True, fixups=[])
    app.conf.update(celery_config(registration))
    context = AgentContext(registration=registration, settings=settings, portal=portal)
    seen = SeenTasks(config_dir() / SEEN_TASKS_FILE)
    base = type("MachineSignedTask", (SignedTask,), {"registration": registration, "seen": seen})
    for agent_task in REGISTRY.values():
        app.task(
            name=agent_task.name,
            bind=True,
            base=base,
            ignore_result=not agent_task.store_result,
            throws=(TaskRefused,),
        )(_make_runner(agent_task, context))
    return app


def heartbeat_payload(registration: Registration | None = None) -> dict:
    return {
        "vault_id": registration.vault_id if registration else "",
        "agent_version": __version__,
        "hostname": socket.gethostname(),
        "os_name": host.os_name(),
        "time": datetime.now(UTC).isoformat(),
    }


class Heartbeat(threading.Thread):
    """Posts ``/api/agent/heartbeat/`` now and then every ``interval`` seconds."""

    def __init__(
        self,
        portal: PortalClient,
        interval: float = HEARTBEAT_SECONDS,
        registration: Registration | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        super().__init__(name="haven-heartbeat", daemon=True)
        self.portal = portal
        self.outbox = outbox
        self.registration = registration
        self.interval = interval
        self.stopped = threading.Event()
        self.beats = 0
        self._last_problem = ""

    def beat(self) -> bool:
        try:
            self.portal.post("heartbeat/", heartbeat_payload(self.registration))
        except PortalRefused as exc:
            self._report(f"the portal refused the heartbeat: {exc}")
            return False
        except PortalError as exc:
            self._report(f"heartbeat not delivered (will retry): {exc}")
            return False
        if self._last_problem:
            log.info("heartbeat delivered again; the portal shows this machine Online")
            self._last_problem = ""
        self.beats += 1
        self.renew_grant_if_due()
        if self.outbox is not None:  # the portal answers: post the results kept meanwhile
            self.outbox.flush(self.portal)
        return True

    def renew_grant_if_due(self) -> None:
        """Ask for a fresh storage grant when the saved one has less than
        ``GRANT_RENEW_BEFORE`` left; tasks read the grant from ``registration.json``."""
        if self.registration is None:
            return
        try:
            renew_grant(self.registration, self.portal, within=GRANT_RENEW_BEFORE)
        except PortalError as exc:
            self._report(f"could not renew the storage grant (will retry): {exc}")

    def _report(self, problem: str) -> None:
        # Log a repeated problem once, not every minute.
        if problem != self._last_problem:
            log.warning(problem)
            self._last_problem = problem

    def run(self) -> None:
        while not self.stopped.is_set():
            self.beat()
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()


# Celery's warning at a worker's start as root. What it warns of is a broker message that
# runs code as root: pickle. This worker accepts JSON only, and runs a task only when the
# portal signed it (agents.runtime.tasksig); with pickle accepted Celery refuses to start as
# root at all, and that refusal is left alone.
ROOT_WARNING = "You're running the worker with superuser privileges"


def root_warning_answered(app: Celery) -> bool:
    """Drop Celery's root warning, and only that one, when ``app`` accepts JSON alone;
    True when it did. The agent runs as root on purpose: to read every file it backs up and
    restore files with their owners (docs/agent.md, "Why the agent runs as root")."""
    if set(app.conf.accept_content) != {"json"}:
        return False
    warnings.filterwarnings(
        "ignore", message=ROOT_WARNING, category=SecurityWarning, module="celery.platforms"
    )
    return True


def worker_argv(
    registration: Registration, loglevel: str = "INFO", logfile: str | None = None
) -> list[str]:
    return [
        "worker",
        "--queues",
        registration.queue,
        "--pool",
        "threads",
        "--concurrency",
        str(POOL_THREADS),
        "--hostname",
        f"{registration.machine_id}@haven-agent",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel",
        loglevel,
        *(["--logfile", logfile] if logfile else []),
    ]


def run_worker(
    registration: Registration,
    settings: Settings,
    *,
    loglevel: str = "INFO",
    logfile: str | None = None,
    heartbeat_interval: float = HEARTBEAT_SECONDS,
) -> None:
    portal = PortalClient(
        registration.portal_url, token=registration.token, proxies=settings.proxies()
    )
    app = make_app(registration, settings, portal=portal)
    outbox = outbox_for_cache(settings.cache_path)
    outbox.recover_abandoned()  # jobs a killed worker left: reported Failed, with the reason
    heartbeat = Heartbeat(portal, heartbeat_interval, registration, outbox)
    heartbeat.start()
    log.info(
        "haven-agent %s worker for machine %s (%s) on queue %s; portal %s",
        __version__,
        registration.machine_name,
        registration.machine_id,
        registration.queue,
        registration.portal_url,
    )
    if root_warning_answered(app) and os.geteuid() == 0:
        log.info(
            "running as root, to read every file it backs up and restore owners; it accepts "
            "only JSON task messages the portal signed"
        )
    try:
        app.worker_main(worker_argv(registration, loglevel, logfile))
    finally:
        heartbeat.stop()
        time.sleep(0)
