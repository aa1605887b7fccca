"""The agent's version: the portal builds installers at this version and flags machines
whose agent is older. Keep it equal to ``[project] version`` in pyproject.toml (a test
checks)."""

from __future__ import annotations

__version__ = "0.1.0"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.10.2"`` -> ``(0, 10, 2)``; unparseable parts count as 0, so garbage is "old"."""
    parts = []
    for part in (version or "").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def is_outdated(version: str, current: str = __version__) -> bool:
    """True when ``version`` is older than ``current`` (an empty version is outdated)."""
    if not version:
        return True
    return version_tuple(version) < version_tuple(current)
