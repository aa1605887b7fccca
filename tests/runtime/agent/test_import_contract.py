"""The agent runtime installs without the portal: it never imports Django, Channels, the
portal or the portal's apps (the import-linter contract in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_the_agent_runtime_imports_no_django():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint)], cwd=REPO, capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The agent runtime never imports Django or the portal KEPT" in result.stdout


def test_the_cli_starts_in_a_python_without_django():
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('django', 'portal', 'vaults', 'jobs', 'channels'):\n"
        "        raise ImportError('forbidden: ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from agents.runtime import cli, worker, register, checks\n"
        "sys.exit(cli.main(['--version']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "haven-agent" in result.stdout
