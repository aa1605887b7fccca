"""The policy the portal pushed, kept on disk for ``haven-agent policy show``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agents.runtime import protocol, throttling
from agents.runtime.config import POLICY_FILE, ensure_private_dir, write_private
from agents.runtime.tasksig import TaskRefused

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

log = logging.getLogger("haven.agent.policy")


class PolicyOutdated(TaskRefused):
    """A pushed policy older than the one applied: a stale or replayed message."""


def save_policy(
    directory: Path, *, spec: dict, version: int, spec_hash: str, machine_id: str = ""
) -> Path:
    ensure_private_dir(directory)
    path = directory / POLICY_FILE
    data = {"spec": spec, "version": version, "spec_hash": spec_hash, "machine_id": machine_id}
    write_private(path, json.dumps(data, indent=2, sort_keys=True).encode())
    return path


def load_policy(directory: Path) -> dict | None:
    try:
        return json.loads((directory / POLICY_FILE).read_text())
    except (OSError, ValueError):
        return None


def format_policy(data: dict | None) -> str:
    """Lines for ``haven-agent policy show``."""
    if not data:
        return "No backup policy yet: set one in the portal (the machine's Backup policy)."
    spec = data["spec"]
    lines = [f"Policy version {data['version']} ({data['spec_hash'][:12]})"]
    if spec.get(protocol.POLICY_PROTECTION) == protocol.PROTECTION_STOPPED:
        lines.append("Protection stopped in the portal: no backups run until it is resumed there.")
    lines.append("Items:")
    lines += [f"  {item}" for item in spec.get("items", [])]
    excludes = [*spec.get("exclude_globs", []), *spec.get("exclude_types", [])]
    if excludes:
        lines.append("Excluded: " + ", ".join(excludes))
    times = ", ".join(spec.get("times", []))
    if spec.get("frequency") == "weekly":
        days = ", ".join(WEEKDAYS[d] for d in spec.get("weekdays", []))
        lines.append(f"Schedule: every {days} at {times} (machine time)")
    else:
        lines.append(f"Schedule: daily at {times} (machine time)")
    retention = spec.get("retention", {})
    for level, unit in (
        ("daily", "days"),
        ("weekly", "weeks"),
        ("monthly", "months"),
        ("yearly", "years"),
    ):
        rule = retention.get(level)
        if rule:
            lines.append(f"Keep {level} points: {rule[unit]} {unit}")
    lines.append(
        "System State: "
        + (
            "collected before each backup"
            if spec.get(protocol.POLICY_SYSTEM_STATE)
            else "not included"
        )
    )
    initial = spec.get("initial_backup", "online")
    staging = spec.get(protocol.POLICY_SEED_STAGING)
    if initial == "offline" and staging:
        initial += f" (seed staging folder {staging}: haven-agent seed export writes there)"
    lines.append(f"Initial backup: {initial}")
    lines.append(f"Network throttling: {throttling.describe(spec.get(throttling.POLICY_KEY))}")
    return "\n".join(lines)


def apply_policy(
    directory: Path,
    portal,
    *,
    policy: dict,
    version: int,
    spec_hash: str,
    machine_id: str = "",
) -> dict:
    """Store the pushed policy and tell the portal (drift shows until it does). A version
    older than the one applied for this machine is refused (``PolicyOutdated``), untouched
    and unreported: versions only grow, so it is a replayed or stale message."""
    applied = load_policy(directory)
    if (
        applied
        and applied.get("machine_id", "") == machine_id
        and isinstance(applied.get("version"), int)
        and version < applied["version"]
    ):
        raise PolicyOutdated(
            f"policy version {version} is older than the applied version "
            f"{applied['version']}: refused (a replayed or stale message)"
        )
    try:
        save_policy(
            directory, spec=policy, version=version, spec_hash=spec_hash, machine_id=machine_id
        )
    except Exception as exc:
        portal.post(
            "jobs/policy/applied/", {"version": version, "spec_hash": spec_hash, "error": str(exc)}
        )
        raise
    return portal.post("jobs/policy/applied/", {"version": version, "spec_hash": spec_hash})
