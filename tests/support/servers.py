"""Starting and finding the servers the tests talk to: Azurite, Redis, PostgreSQL.

Under ``make test`` (``HAVEN_REQUIRE_SERVERS=1``) and in CI a missing server fails the run;
a developer running a single test file without them gets a skip that says what is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite-blob"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def servers_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("HAVEN_REQUIRE_SERVERS") == "1"


def unavailable(what: str) -> None:
    """Fail when servers are required, skip otherwise."""
    if servers_required():
        pytest.fail(f"{what} (required under make test / CI)", pytrace=False)
    pytest.skip(what)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def azurite_connection_string(port: int) -> str:
    return (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )


class Azurite:
    """An Azurite blob server in a temporary directory, started and stopped by the tests."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.port)

    def start(self) -> None:
        if not AZURITE_BIN.exists():
            unavailable(f"Azurite is not installed at {AZURITE_BIN} (run make test, or npm ci)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                str(AZURITE_BIN),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--location",
                str(self.workdir),
                "--silent",
                "--loose",
                "--skipApiVersionCheck",
                "--disableTelemetry",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                unavailable("Azurite did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def redis_url() -> str:
    url = os.environ.get("REDIS_URL") or os.environ.get("HAVEN_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    parts = urlsplit(url)
    if not port_open(parts.hostname or "127.0.0.1", parts.port or 6379):
        unavailable(f"Redis is not reachable at {parts.hostname}:{parts.port or 6379}")
    return url


def worker_environment(index: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """What pytest-xdist's worker ``index`` changes in its environment before Django reads
    its settings, so that workers share nothing but the servers themselves: its own data
    directory (SQLite test database, filesystem broker, cache, local storage) and its own
    Redis database, counted down from the one given (worker 1 of ``redis://…/14`` uses 13:
    the portal's Celery queue, cache and channel layer are per database). PostgreSQL test
    databases are per worker already (pytest-django suffixes them ``_gw0``, ``_gw1``…);
    Azurite, Chromium and live servers are session fixtures, so each worker starts its own
    on a free port."""
    environ = dict(os.environ if environ is None else environ)
    data_dir = Path(environ.get("HAVEN_DATA_DIR") or REPO / "var")
    changed = {"HAVEN_DATA_DIR": str(data_dir / f"worker-{index}")}
    # The test Redis of the embedded pass (``redis_url()``) too: agent tests use it there.
    environ.setdefault("HAVEN_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    for name in ("REDIS_URL", "HAVEN_TEST_REDIS_URL", "HAVEN_AGENT_BROKER_URL"):
        if environ.get(name):
            changed[name] = _redis_database_counted_down(environ[name], index, name)
    return changed


def _redis_database_counted_down(url: str, index: int, name: str) -> str:
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    if base - index < 0:
        raise ValueError(
            f"{name}={url} leaves no Redis database for test worker {index}: "
            f"give it a database number of at least {index} (worker n uses the number minus n)"
        )
    return urlunsplit(parts._replace(path=f"/{base - index}"))


def check_database_url() -> None:
    url = os.environ.get("DATABASE_URL")
    if not url or url.startswith("sqlite"):
        return
    parts = urlsplit(url)
    if not port_open(parts.hostname or "127.0.0.1", parts.port or 5432):
        pytest.exit(
            f"PostgreSQL is not reachable at {parts.hostname}:{parts.port or 5432}", returncode=3
        )
