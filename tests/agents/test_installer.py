"""The installer script: one POSIX shell file carrying the agent package at the portal's
version, with its runtime dependencies and nothing from the portal."""

from __future__ import annotations

import base64
import gzip
import io
import subprocess
import tarfile
import tomllib
from pathlib import Path

from agents import installer
from agents.runtime.version import __version__

REPO = Path(__file__).resolve().parents[2]


def payload_of(script: bytes) -> tarfile.TarFile:
    text = script.decode("ascii")
    encoded = text.split(installer.PAYLOAD_MARKER + "\n", 1)[1]
    return tarfile.open(fileobj=io.BytesIO(gzip.decompress(base64.b64decode(encoded))))


def test_the_script_is_valid_posix_shell():
    script = installer.build_installer(portal_url="https://haven.example.test")
    result = subprocess.run(["sh", "-n"], input=script, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert b"https://haven.example.test" in script and __version__.encode() in script


def test_the_payload_is_the_agent_package_only():
    tar = payload_of(installer.build_installer(portal_url="http://p"))
    names = tar.getnames()
    root = f"haven-agent-{__version__}"
    assert f"{root}/pyproject.toml" in names
    assert f"{root}/agents/__init__.py" in names
    assert f"{root}/agents/runtime/cli.py" in names
    assert f"{root}/agents/runtime/engine/repository.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.startswith(f"{root}/portal") or n.startswith(f"{root}/vaults") for n in names)
    assert not any(
        n.startswith(f"{root}/agents/")
        and "runtime" not in n
        and not n.endswith("agents/__init__.py")
        for n in names
    )
    pyproject = tomllib.loads(tar.extractfile(f"{root}/pyproject.toml").read().decode())
    assert pyproject["project"]["name"] == "haven-agent"
    assert pyproject["project"]["version"] == __version__
    assert pyproject["project"]["scripts"]["haven-agent"] == "agents.runtime.cli:main"


def test_the_build_is_reproducible():
    assert installer.build_payload() == installer.build_payload()


def test_agent_version_and_dependencies_follow_the_project():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
    assert project["scripts"]["haven-agent"] == "agents.runtime.cli:main"
    for dependency in installer.DEPENDENCIES:
        assert dependency in project["dependencies"], dependency


def test_the_help_runs_without_installing(tmp_path):
    script = tmp_path / "install.sh"
    script.write_bytes(installer.build_installer(portal_url="http://p"))
    result = subprocess.run(
        ["sh", str(script), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "--cache-dir" in result.stdout and "--proxy" in result.stdout
    bad = subprocess.run(
        ["sh", str(script), "--bogus"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
