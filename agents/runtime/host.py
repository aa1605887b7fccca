"""What the agent says about its host's operating system: a name a person reads ("Debian
GNU/Linux 12 (bookworm)", "Windows 11", "macOS 14.4"), sent at registration, in every
heart-beat and in the ping answer. The portal shows it as given (and makes the raw
``platform.platform()`` strings of older agents readable: ``agents.models.os_label``)."""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping


def _os_release() -> Mapping[str, str]:
    try:
        return platform.freedesktop_os_release()  # /etc/os-release, else /usr/lib/os-release
    except OSError:
        return {}


def os_name(
    *,
    system: Callable[[], str] = platform.system,
    os_release: Callable[[], Mapping[str, str]] = _os_release,
) -> str:
    """The host's OS in words: Linux's ``PRETTY_NAME`` (else ``NAME VERSION``), Windows' and
    macOS' product name and version; the kernel's name and release when nothing says more."""
    kind = system()
    if kind == "Linux":
        release = os_release()
        pretty = (release.get("PRETTY_NAME") or "").strip()
        if pretty:
            return pretty
        named = " ".join(
            part for part in (release.get("NAME"), release.get("VERSION")) if part
        ).strip()
        if named:
            return named
    elif kind == "Windows":
        product, version, _csd, _ptype = platform.win32_ver()
        edition = platform.win32_edition() or ""
        words = " ".join(part for part in ("Windows", product, edition) if part)
        return f"{words} ({version})" if version else words
    elif kind == "Darwin":
        version = platform.mac_ver()[0]
        return f"macOS {version}" if version else "macOS"
    return " ".join(part for part in (kind, platform.release()) if part) or platform.platform()
