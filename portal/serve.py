"""The portal's web server: one listening socket served by one or more daphne processes.

Python runs one thread of a process at a time, so one daphne uses at most one core. With
Redis (``REDIS_URL``) every state the processes must share is in PostgreSQL and Redis (the
channel layer, the cache, the rate counts), so ``manage.py haven_run`` opens the port once
and starts ``HAVEN_PORTAL_PROCESSES`` daphne processes that each accept connections on it
(``daphne --fd``): the kernel hands a new connection to whichever process is waiting in
``accept`` — a busy one takes fewer. A connection stays with the process that accepted it.

Each process keeps its own short-lived caches (docs/security.md, the agent token cache's
5 s; the running jobs of ``jobs.progress_api``): what one process changes the others learn
through the database within those bounds. Without Redis (the embedded defaults) there is
one process: the in-memory channel layer reaches only its own sockets.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LISTEN_BACKLOG = 1024


def listening_socket(bind: str, port: int) -> socket.socket:
    """The portal's port, open and listening, to be handed to the daphne processes."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.create_server((bind, port), family=family, backlog=LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def daphne_command(fd: int, *, python: str = sys.executable, access_log: bool = True) -> list[str]:
    """daphne serving ``fd`` (through ``portal.web``, which sets the collector first);
    without ``access_log`` it prints no line per request (``--verbosity 0``: its own
    warnings and errors still show)."""
    quiet = [] if access_log else ["--verbosity", "0"]
    return [python, "-m", "portal.web", *quiet, "--fd", str(fd), "portal.asgi:application"]


def start_web(
    sock: socket.socket,
    processes: int,
    *,
    env: Mapping[str, str],
    access_log: bool = True,
    **popen: Any,
) -> list[subprocess.Popen]:
    """``processes`` daphne processes serving ``sock`` (each its own session, so that its
    own children are stopped with it)."""
    fd = sock.fileno()
    popen.setdefault("cwd", REPO)
    command = daphne_command(fd, access_log=access_log)
    return [
        subprocess.Popen(command, env=dict(env), pass_fds=(fd,), start_new_session=True, **popen)
        for _ in range(processes)
    ]
