"""Real agents for the fault tests: the live portal of tests/e2e (``agent_portal``, a daphne
process on the test database, machines with their own Redis users) and machines running
``haven-agent`` straight from this checkout (no install: the e2e suite tests the
installer), each with its own home, config, passphrase and worker process."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import pytest

from tests.e2e._agent_support import AgentMachines, agent_portal, vault_owner  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_agent(tmp_path) -> Path:
    """``haven-agent`` as a machine would run it, from this checkout's code."""
    script = tmp_path / "bin" / "haven-agent"
    script.parent.mkdir()
    script.write_text(
        f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m agents.runtime.cli "$@"\n'
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def machines(agent_portal, repo_agent, tmp_path):  # noqa: F811 - the fixture above
    running = AgentMachines(agent_portal, repo_agent, tmp_path / "machines")
    try:
        yield running
    finally:
        running.stop_all()


@contextlib.contextmanager
def portal_broker_at(settings, monkeypatch, url: str):
    """This process's portal Celery app (where the test's requests dispatch) on ``url``."""
    from tests.e2e._agent_support import _portal_broker_on_redis

    with _portal_broker_on_redis(settings, monkeypatch, url):
        yield


def wait_for_job(job, agent, timeout: float = 90):
    """The job once it is no longer active (bounded)."""
    from jobs.models import Job

    deadline = time.monotonic() + timeout
    while True:
        job.refresh_from_db()
        if job.status not in Job.ACTIVE:
            return job
        assert time.monotonic() < deadline, f"job {job.pk} is still {job.status}:\n" + (
            agent.log_text() + agent.stderr_text()
        )
        time.sleep(0.2)
