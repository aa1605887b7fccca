"""Support for the vault e2e test: storage in a temporary directory shared by every process,
and a real portal worker (``celery -A portal worker -Q portal --pool=solo``) on the test
database, started when the test asks for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def e2e_storage(settings, tmp_path):
    """Must come before ``live_portal`` in the test's arguments: the forked portal copies
    the settings as they are when it starts."""
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.SECONDARY_STORAGE_DIR = tmp_path / "storage-secondary"
    return settings


class PortalWorker:
    def __init__(self, base_url: str, settings, log_path: Path):
        self.base_url = base_url
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        from django.db import connection

        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.e2e._vault_worker_settings",
            "HAVEN_E2E_DB_NAME": str(connection.settings_dict["NAME"]),
            "HAVEN_INTERNAL_URL": self.base_url,
            "HAVEN_PUBLIC_URL": self.settings.HAVEN_PUBLIC_URL,
            "HAVEN_STORAGE_DIR": str(self.settings.STORAGE_DIR),
            "HAVEN_SECONDARY_STORAGE_DIR": str(self.settings.SECONDARY_STORAGE_DIR),
            "PYTHONPATH": str(REPO),
        }
        if self.settings.AZURE_STORAGE_CONNECTION_STRING:
            env["AZURE_STORAGE_CONNECTION_STRING"] = self.settings.AZURE_STORAGE_CONNECTION_STRING
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "-Q",
                "portal",
                "--pool=solo",
                "-n",
                f"e2e-vaults-{uuid.uuid4().hex[:8]}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while "ready." not in self.log_path.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"the portal worker did not start:\n{self.log_path.read_text()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self.log.close()
        self.process = None


@pytest.fixture
def portal_worker(live_portal, e2e_storage, tmp_path):
    worker = PortalWorker(live_portal, e2e_storage, tmp_path / "worker.log")
    yield worker
    worker.stop()
