"""Several web processes on one port (portal.serve, manage.py haven_run): with Redis they
share the listening socket, so the port is served while any of them lives; without Redis
there is one, as live pushes reach only their own process's sockets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.core.management import CommandError, call_command

from portal import serve
from tests.faults.test_two_portals import SECRET, _database_url

CLOSE = {"Connection": "close"}  # a new connection each time: any process may take it


def test_more_than_one_web_process_is_refused_without_redis(settings):
    settings.REDIS_URL = None
    with pytest.raises(CommandError, match="more than one web process needs REDIS_URL"):
        call_command("haven_run", web_processes=2)


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for link in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(link)
            if target.startswith("socket:"):
                found.add(target)
    return found


def _answers(url: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, headers=CLOSE, timeout=10).status_code
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.servers
def test_two_web_processes_serve_one_port_and_it_outlives_either(transactional_db, settings):
    if not settings.REDIS_URL:
        pytest.skip("several web processes need Redis (the servers pass)")
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": SECRET,
        "ALLOWED_HOSTS": "127.0.0.1",
    }
    sock = serve.listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    listening = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
    web = serve.start_web(sock, 2, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock.close()  # as haven_run does: only the web processes hold it now
    url = f"http://127.0.0.1:{port}/signin/"
    try:
        assert _answers(url) == 200
        assert all(listening in _socket_inodes(p.pid) for p in web), "both hold the port"
        web[0].send_signal(signal.SIGKILL)
        web[0].wait(10)
        assert [_answers(url, timeout=10) for _ in range(3)] == [200] * 3
    finally:
        for process in web:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


def test_a_web_process_freezes_what_it_loaded_and_collects_young_objects_less_often():
    """``python -m portal.web`` (what ``start_web`` runs) sets its collector before serving:
    the application it loaded is frozen, out of every later collection's walk."""
    from portal import web

    probe = (
        "import gc, json, portal.web as web; web.settle_collector(); "
        "print(json.dumps([gc.get_freeze_count(), gc.get_threshold()[0]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    frozen, young = json.loads(out.stdout.strip().splitlines()[-1])
    assert frozen > 50_000  # Django, the apps and the ASGI application
    assert young == web.YOUNG_COLLECTION_EVERY > 700
    assert serve.daphne_command(3)[1:3] == ["-m", "portal.web"]
