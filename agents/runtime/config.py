"""The agent's files: installation settings and the machine's registration.

Both live in one config directory readable only by the agent's user (0700, files 0600):
``$HAVEN_AGENT_CONFIG_DIR``, else ``/etc/haven-agent`` for root, else
``$XDG_CONFIG_HOME/haven-agent`` (``~/.config/haven-agent``).

- ``settings.json``: installation settings (install location, cache location, proxy URL and
  optional proxy credentials, the passphrase file's path), written by the installer and
  ``haven-agent configure``.
- ``registration.json``: who this machine is (machine id, name, vault, portal) and its
  secrets (API token, broker URL with its own broker user, the portal's public key). Never
  the encryption passphrase: that stays wherever the user chose to keep it.

Files are written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

SETTINGS_FILE = "settings.json"
REGISTRATION_FILE = "registration.json"
POLICY_FILE = "policy.json"  # the applied backup policy (agents.runtime.jobs.policy)


class ConfigError(Exception):
    """A config file is missing, unreadable or too open; the message says what to do."""


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def config_dir() -> Path:
    override = os.environ.get("HAVEN_AGENT_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    if is_root():
        return Path("/etc/haven-agent")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "haven-agent"


def default_install_dir() -> Path:
    if is_root():
        return Path("/opt/haven-agent")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "haven-agent"


def default_cache_dir() -> Path:
    if is_root():
        return Path("/var/cache/haven-agent")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "haven-agent"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (0700) or tighten it; refuse a directory owned by someone else."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise ConfigError(
            f"{path} belongs to another user (uid {info.st_uid}); run haven-agent as that "
            "user or set HAVEN_AGENT_CONFIG_DIR to a directory of your own"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ConfigError(
            f"cannot read {path}: permission denied. Run haven-agent as the user that "
            "registered the machine (root for a system install)."
        ) from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise ConfigError(
            f"{path} is not valid JSON; restore it or register the machine again"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return data


_Record = TypeVar("_Record", "Settings", "Registration")


def _from_dict(cls: type[_Record], data: dict[str, Any]) -> _Record:
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Settings:
    """Installation settings (the reference's Installation Settings and Proxy Configuration)."""

    install_dir: str = ""
    cache_dir: str = ""
    proxy_url: str = ""
    proxy_username: str = ""
    proxy_password: str = ""
    # Where scheduled backups read the encryption passphrase (a 0600 file of the user's
    # choosing); empty when the passphrase was only typed at registration.
    passphrase_file: str = ""
    # Network throttling: bytes per second to and from the vault's storage, each direction
    # (0: unlimited). Backups upload at most this fast, restores download at most this fast.
    bandwidth_limit: int = 0

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def proxy_with_credentials(self) -> str:
        """The proxy URL with the optional credentials filled in ('' when no proxy)."""
        if not self.proxy_url:
            return ""
        if not self.proxy_username:
            return self.proxy_url
        parts = urlsplit(self.proxy_url)
        userinfo = quote(self.proxy_username, safe="")
        if self.proxy_password:
            userinfo += ":" + quote(self.proxy_password, safe="")
        host = parts.hostname or ""
        netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def proxies(self) -> dict[str, str] | None:
        """A requests-style proxies mapping for portal and storage traffic."""
        proxy = self.proxy_with_credentials()
        return {"http": proxy, "https": proxy} if proxy else None


SIZE_UNITS = {"": 1, "B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
MIN_BANDWIDTH = 64 * 1024


def parse_bandwidth(text: str) -> int:
    """``2MB``, ``512KB``, ``1.5 MB`` (per second, powers of 1024) or ``off`` -> bytes per
    second (0 = unlimited)."""
    value = text.strip().upper().removesuffix("/S").replace(" ", "")
    if value in ("", "0", "OFF", "NONE", "UNLIMITED"):
        return 0
    number = value.rstrip("KMGB")
    unit = value[len(number) :]
    try:
        amount = float(number) * SIZE_UNITS[unit]
    except (ValueError, KeyError):
        raise ConfigError(
            f"bandwidth limit {text!r} is not a rate like 512KB, 2MB or 1.5GB (per second), or off"
        ) from None
    if amount < MIN_BANDWIDTH:
        raise ConfigError(f"a bandwidth limit below 64KB per second is not useful (got {text!r})")
    return int(amount)


def format_bandwidth(limit: int) -> str:
    if not limit:
        return "unlimited"
    for unit in ("GB", "MB", "KB"):
        if limit >= SIZE_UNITS[unit]:
            return f"{limit / SIZE_UNITS[unit]:g} {unit}/s"
    return f"{limit} B/s"


def validate_proxy_url(url: str) -> str:
    url = url.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "socks5", "socks5h") or not parts.hostname:
        raise ConfigError(
            f"proxy {url!r} is not a URL like http://proxy.example.com:3128 "
            "(schemes: http, https, socks5, socks5h)"
        )
    return url


@dataclass
class Registration:
    """This machine's identity and credentials, as returned by the portal at registration."""

    portal_url: str
    portal_public_key: str
    portal_fingerprint: str
    subscription_id: str
    subscription_name: str
    resource_group: str
    vault_id: str
    vault_name: str
    machine_id: str
    machine_name: str
    token: str
    broker_url: str
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    result_key_prefix: str = ""
    queue: str = ""
    container: str = ""
    grant: dict[str, Any] = field(default_factory=dict)
    repository_id: str = ""
    registered_at: str = ""

    def public_view(self) -> dict[str, str]:
        """What ``haven-agent status`` may print: no token, no broker password, no grant."""
        return {
            "portal": self.portal_url,
            "portal key fingerprint": self.portal_fingerprint,
            "subscription": self.subscription_name or self.subscription_id,
            "resource group": self.resource_group,
            "vault": f"{self.vault_name} ({self.vault_id})",
            "machine": f"{self.machine_name} ({self.machine_id})",
            "queue": self.queue,
            "registered": self.registered_at,
        }


def load_settings(directory: Path | None = None) -> Settings:
    data = _read_json((directory or config_dir()) / SETTINGS_FILE)
    return _from_dict(Settings, data) if data else Settings()


def save_settings(settings: Settings, directory: Path | None = None) -> Path:
    directory = ensure_private_dir(directory or config_dir())
    path = directory / SETTINGS_FILE
    write_private(path, json.dumps(asdict(settings), indent=2).encode())
    return path


def load_registration(directory: Path | None = None) -> Registration | None:
    data = _read_json((directory or config_dir()) / REGISTRATION_FILE)
    if data is None:
        return None
    try:
        return _from_dict(Registration, data)
    except TypeError as exc:
        raise ConfigError(
            f"{REGISTRATION_FILE} is incomplete ({exc}); register the machine again"
        ) from None


def save_registration(registration: Registration, directory: Path | None = None) -> Path:
    directory = ensure_private_dir(directory or config_dir())
    path = directory / REGISTRATION_FILE
    write_private(path, json.dumps(asdict(registration), indent=2).encode())
    return path


def remove_registration(directory: Path | None = None) -> bool:
    try:
        ((directory or config_dir()) / REGISTRATION_FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def require_registration(directory: Path | None = None) -> Registration:
    registration = load_registration(directory)
    if registration is None:
        raise ConfigError(
            f"this machine is not registered (no {REGISTRATION_FILE} in "
            f"{directory or config_dir()}). Download vault credentials in the portal and run "
            "haven-agent register --vault-credentials FILE"
        )
    return registration
