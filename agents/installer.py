"""Building the agent installer the portal serves: one POSIX shell script with the agent
package embedded.

The payload is a gzipped tarball of a ``haven-agent`` source distribution built from this
repository's own code at the portal's version: ``agents/__init__.py`` and
``agents/runtime/**`` (no caches), plus a minimal ``pyproject.toml`` naming the agent's
runtime dependencies. The script (``installer.sh.in``) makes a virtualenv, pip-installs
the package into it, links ``haven-agent`` onto PATH and writes the installation
settings. The build is deterministic (fixed times and owners), so the same code gives
the same bytes, and it is cached per content.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from agents.runtime.version import __version__

AGENTS_DIR = Path(__file__).resolve().parent
TEMPLATE = AGENTS_DIR / "installer.sh.in"
FILENAME = "haven-agent-install.sh"
PAYLOAD_MARKER = "__HAVEN_AGENT_PAYLOAD__"

# The agent's runtime dependencies; a test checks each is in the project's own list.
DEPENDENCIES = [
    "celery[redis]>=5.4,<6",
    "requests>=2.32",
    "cryptography>=44",
    "azure-storage-blob>=12.24",
    "pyfastcdc>=0.3",
    "blake3>=1.0",
    "zstandard>=0.23",
    "tqdm>=4.70",
]
EXCLUDED_PARTS = {"__pycache__", "tests", ".pytest_cache", ".mypy_cache"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo", ".so", ".orig", ".rej", ".swp"}


def pyproject_text(version: str = __version__) -> str:
    deps = "\n".join(f'    "{dep}",' for dep in DEPENDENCIES)
    return f"""[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "haven-agent"
version = "{version}"
description = "Haven backup agent: registers a machine to a vault and runs its backups"
requires-python = ">=3.11"
dependencies = [
{deps}
]

[project.scripts]
haven-agent = "agents.runtime.cli:main"

[tool.setuptools.packages.find]
include = ["agents", "agents.runtime", "agents.runtime.*"]
"""


def source_files() -> list[tuple[str, Path]]:
    """(archive name, path) of every file shipped, in a stable order."""
    files = [("agents/__init__.py", AGENTS_DIR / "__init__.py")]
    for path in sorted((AGENTS_DIR / "runtime").rglob("*")):
        relative = path.relative_to(AGENTS_DIR.parent)
        if not path.is_file() or EXCLUDED_PARTS & set(relative.parts):
            continue
        if path.suffix in EXCLUDED_SUFFIXES or path.name.startswith("."):
            continue
        files.append((relative.as_posix(), path))
    return files


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def build_payload(version: str = __version__) -> bytes:
    """The gzipped source tarball (top directory ``haven-agent-<version>/``)."""
    root = f"haven-agent-{version}"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, f"{root}/pyproject.toml", pyproject_text(version).encode())
        _add(
            tar,
            f"{root}/README.txt",
            b"The Haven backup agent. Install with the haven-agent-install.sh script from "
            b"your Haven portal; docs/agent.md in the Haven repository describes it.\n",
        )
        for name, path in source_files():
            _add(tar, f"{root}/{name}", path.read_bytes())
    # mtime=0 keeps gzip's header stable too.
    return gzip.compress(raw.getvalue(), mtime=0)


def _fingerprint() -> str:
    digest = hashlib.sha256(TEMPLATE.read_bytes())
    for name, path in source_files():
        stat = path.stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _build(portal_url: str, version: str, fingerprint: str) -> bytes:
    del fingerprint  # part of the cache key only
    script = (
        TEMPLATE.read_text()
        .replace("@@VERSION@@", version)
        .replace("@@PORTAL_URL@@", portal_url.replace("'", ""))
    )
    payload = base64.encodebytes(build_payload(version)).decode("ascii")
    if not script.endswith(PAYLOAD_MARKER + "\n"):
        raise RuntimeError(f"{TEMPLATE} must end with the line {PAYLOAD_MARKER}")
    return (script + payload).encode("ascii")


def build_installer(*, portal_url: str, version: str = __version__) -> bytes:
    """The whole ``haven-agent-install.sh``."""
    return _build(portal_url, version, _fingerprint())
