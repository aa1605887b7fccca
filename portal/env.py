"""Typed readers for environment variables, used only by ``portal.settings``.

Each reader fails loudly with the variable's name when a value cannot be used, so a
typo in production stops start-up instead of surfacing later as an odd behaviour.
Secrets may be given as ``NAME_FILE`` pointing at a file that holds the value.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingError(Exception):
    """A configuration variable holds a value Haven cannot use."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name = name


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None, *, environ=os.environ) -> str | None:
    """The value of ``name``, or of the file named by ``name_FILE``, else ``default``."""
    file_var = f"{name}_FILE"
    if environ.get(file_var):
        path = Path(environ[file_var])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise SettingError(file_var, f"cannot read {path}: {exc.strerror}") from exc
    value = environ.get(name)
    if value is None:
        return default
    return value.strip()


def env_bool(name: str, default: bool, *, environ=os.environ) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingError(name, f"expected true or false, got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, environ=os.environ) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingError(name, f"expected a whole number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingError(name, f"must be at least {minimum}, got {value}")
    return value


def env_float(
    name: str, default: float, *, minimum: float | None = None, environ=os.environ
) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingError(name, f"expected a number of seconds, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingError(name, f"expected a number of seconds, got {raw!r}")
    if minimum is not None and value < minimum:
        raise SettingError(name, f"must be at least {minimum:g}, got {value:g}")
    return value


def env_list(name: str, default: list[str], *, environ=os.environ) -> list[str]:
    raw = environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_networks(name: str, *, environ=os.environ) -> tuple[IPNetwork, ...]:
    """Comma-separated IP addresses or networks (``10.0.0.5``, ``10.0.0.0/8``, ``::1``)."""
    networks = []
    for item in env_list(name, [], environ=environ):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingError(
                name, f"expected IP addresses or networks like 10.0.0.0/8, got {item!r}"
            ) from None
    return tuple(networks)


def env_url(
    name: str, *, schemes: tuple[str, ...], default: str | None = None, environ=os.environ
) -> str | None:
    """A URL whose scheme is one of ``schemes`` and that names a host."""
    value = env_str(name, default, environ=environ)
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise SettingError(
            name, f"expected a URL starting with {allowed}, got {parts.scheme or value!r}"
        )
    if not parts.hostname and parts.scheme not in ("sqlite",):
        raise SettingError(name, "the URL names no host")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise SettingError(name, "the URL has an invalid port") from None
    return value


def azure_connection_string(name: str, *, environ=os.environ) -> str | None:
    """An Azure Storage connection string with an account name and key (or a SAS)."""
    value = env_str(name, None, environ=environ)
    if not value:
        return None
    fields = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        key, sep, val = part.partition("=")
        if not sep:
            raise SettingError(name, f"expected Key=Value pairs separated by ';', got {part!r}")
        fields[key.strip()] = val.strip()
    if "UseDevelopmentStorage" in fields:
        return value
    if "AccountName" not in fields or not (
        "AccountKey" in fields or "SharedAccessSignature" in fields
    ):
        raise SettingError(name, "needs AccountName and AccountKey (or SharedAccessSignature)")
    return value
