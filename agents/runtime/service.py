"""``haven-agent install-service``: a systemd unit that keeps the worker running.

As root the unit goes to ``/etc/systemd/system/haven-agent.service`` (a system service
running as root, so it can read everything it backs up); otherwise to the user's
``~/.config/systemd/user/`` (a user service; ``loginctl enable-linger`` keeps it running
after logout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from agents.runtime.config import config_dir, is_root

UNIT_NAME = "haven-agent.service"


def systemd_available() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def default_unit_dir() -> Path:
    if is_root():
        return Path("/etc/systemd/system")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def agent_executable() -> str:
    """The ``haven-agent`` next to this interpreter (the agent's virtualenv)."""
    candidate = Path(sys.executable).with_name("haven-agent")
    if candidate.exists():
        return str(candidate)
    return shutil.which("haven-agent") or f"{sys.executable} -m agents.runtime.cli"


def unit_text(*, executable: str, config: Path, system: bool) -> str:
    return f"""[Unit]
Description=Haven backup agent (worker for this machine's queue)
Documentation=file://{config}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
Environment=HAVEN_AGENT_CONFIG_DIR={config}
ExecStart={executable} worker
# A warm shutdown lets a running task finish; a task cut short is delivered again.
KillSignal=SIGTERM
TimeoutStopSec=300
Restart=always
RestartSec=10
UMask=0077

[Install]
WantedBy={"multi-user.target" if system else "default.target"}
"""


def install_service(unit_dir: Path | None = None, *, start: bool = True) -> tuple[Path, str]:
    """Write the unit; enable and start it when systemd runs. Returns (path, note)."""
    system = is_root()
    target_dir = unit_dir or default_unit_dir()
    if unit_dir is None and not systemd_available():
        raise RuntimeError(
            "systemd is not running on this machine, so no unit was written. Start "
            "'haven-agent worker' from your init system (it must run as the user that "
            "registered the machine), or pass --unit-dir DIR to write the unit anyway."
        )
    target_dir.mkdir(parents=True, exist_ok=True)
    path = target_dir / UNIT_NAME
    path.write_text(
        unit_text(executable=agent_executable(), config=config_dir().resolve(), system=system)
    )
    if unit_dir is not None or not start:
        return path, "unit written; not started"
    scope = [] if system else ["--user"]
    for args in (["daemon-reload"], ["enable", "--now", UNIT_NAME]):
        result = subprocess.run(
            ["systemctl", *scope, *args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            return path, f"systemctl {' '.join(args)} failed: {result.stderr.strip()}"
    hint = "" if system else " (run 'loginctl enable-linger' to keep it running after logout)"
    return path, f"enabled and started{hint}"
