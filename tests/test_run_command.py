"""`make run`'s command: everything starts, serves, and stops with nothing left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.servers import free_port, port_open

REPO = Path(__file__).resolve().parents[1]


def _descendants(pid: int) -> set[int]:
    """Every process whose ancestry leads to ``pid`` (including other sessions)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


@pytest.mark.slow
def test_it_serves_the_portal_and_stops_everything_on_ctrl_c(tmp_path):
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "AZURE_STORAGE_CONNECTION_STRING",
            "DJANGO_ALLOW_ASYNC_UNSAFE",
        }
    }
    env.update(HAVEN_DATA_DIR=str(tmp_path / "data"), HAVEN_PORT=str(port))
    process = subprocess.Popen(
        [sys.executable, "manage.py", "haven_run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the portal did not start within 60 s"
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/signin/") as response:
            assert response.status == 200
            assert b"Sign in" in response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/css/haven.css") as response:
            assert response.status == 200
        time.sleep(2)  # let the worker and beat finish starting
        children = _descendants(process.pid)
        assert len(children) >= 3, "expected the web server, the worker and beat"
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "user name  admin" in output
    # Nothing a newcomer cannot act on: no warnings (Celery's about root, kombu's about a
    # host name), no banners, no line per request or per task (those need --verbose).
    noise = [
        line
        for line in output.splitlines()
        if re.search(r"warn|celery beat v|\[tasks\]|GET /|WSCONNECT", line, re.IGNORECASE)
    ]
    assert noise == [], "\n".join(noise)
    if os.geteuid() == 0:
        assert "You are running Haven as root" in output
    password_line = next(line for line in output.splitlines() if "password   " in line)
    assert len(password_line.split()[-1]) >= 16
    time.sleep(0.5)
    leftovers = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert leftovers == [], f"processes left behind: {leftovers}"

    # A second run reuses the installation: no new admin, no password printed.
    again = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "--no-imports",
            "-c",
            "from portal.services import first_admin_create; print(first_admin_create())",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.stdout.strip() == "None"
