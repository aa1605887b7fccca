"""Which repository a recovery reads, and opening it.

Every machine has its own repository in its own container of the vault, encrypted under the
passphrase chosen when it registered. Recovering *this* machine's data uses the machine's own
storage grant and its saved passphrase. Recovering *another* machine's data (to this one) —
the reference's "another server" recovery — needs two things:

* a **read-only grant** to the source machine's container, which the portal issues to any
  machine registered to the same vault (``POST /api/agent/recovery/grant/``, short-lived,
  permissions ``rl``: it can neither write nor delete), and
* the **source machine's passphrase**, typed on this machine (``haven-agent
  recovery-passphrase --from-machine NAME``) and kept in the agent's private config directory
  (``recovery-passphrases/<machine id>``, 0600), never sent anywhere. It is checked against the
  repository when typed, so a wrong one is refused at once.

Without the passphrase the grant gives only ciphertext, so the vault stays the trust boundary,
as in the reference (vault credentials + passphrase recover anywhere).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agents.runtime import config

PASSPHRASES_DIR = "recovery-passphrases"


class RecoveryError(Exception):
    """A recovery cannot go on; ``code`` for programs, the message for people."""

    code = "error"


class PassphraseNeeded(RecoveryError):
    code = "passphrase_needed"


class SourceRefused(RecoveryError):
    code = "source_refused"


@dataclass
class Source:
    """The machine whose recovery points are read."""

    machine_id: str
    machine_name: str
    grant: dict = field(repr=False, default_factory=dict)
    own: bool = True


def resolve_source(*, registration, portal=None, machine: str | None = None) -> Source:
    """This machine (``machine`` empty, its id or its name) or another machine of the vault,
    for which the portal hands out a read-only grant."""
    if not machine or machine in (registration.machine_id, registration.machine_name):
        return Source(
            registration.machine_id, registration.machine_name, registration.grant, own=True
        )
    if portal is None:
        raise SourceRefused(
            "reading another machine's backups needs the portal (for a read-only storage grant)"
        )
    from agents.runtime.portal_api import PortalRefused

    try:
        answer = portal.post("recovery/grant/", {"source_machine": machine})
    except PortalRefused as exc:
        raise SourceRefused(str(exc)) from None
    info = answer.get("machine") or {}
    return Source(
        str(info.get("id") or machine),
        str(info.get("name") or machine),
        dict(answer.get("grant") or {}),
        own=False,
    )


def renew_own_grant(registration, portal, *, save: bool = True) -> None:
    """Ask the portal for a fresh grant when this machine's has expired."""
    from agents.runtime.blobstore.grants import grant_expiry

    try:
        expired = grant_expiry(registration.grant) <= datetime.now(UTC)
    except Exception:
        expired = True
    if not expired or portal is None:
        return
    answer = portal.post("grant/", {})
    if answer.get("grant"):
        registration.grant = answer["grant"]
        if save:
            config.save_registration(registration)


# -- passphrases ------------------------------------------------------------------------------
def _passphrase_path(machine_id: str) -> Path:
    safe = "".join(ch for ch in machine_id if ch.isalnum() or ch in "-_")
    if not safe:
        raise RecoveryError(f"{machine_id!r} is not a machine id")
    return config.config_dir() / PASSPHRASES_DIR / safe


def own_passphrase(settings, extra: dict | None = None) -> str | None:
    """This machine's saved passphrase (the same places backups look), or None."""
    from agents.runtime.passphrase import read_file

    extra = extra or {}
    if extra.get("passphrase"):
        return extra["passphrase"]
    for candidate in (
        getattr(settings, "passphrase_file", ""),
        os.environ.get("HAVEN_AGENT_PASSPHRASE_FILE", ""),
        str(config.config_dir() / "passphrase"),
    ):
        if candidate and Path(candidate).exists():
            return read_file(Path(candidate))
    return None


def saved_passphrase(source: Source, settings, extra: dict | None = None) -> str | None:
    if source.own:
        return own_passphrase(settings, extra)
    extra = extra or {}
    if extra.get("passphrases", {}).get(source.machine_id):
        return extra["passphrases"][source.machine_id]
    from agents.runtime.passphrase import read_file

    path = _passphrase_path(source.machine_id)
    return read_file(path) if path.exists() else None


def remember_passphrase(source: Source, passphrase: str) -> Path:
    """Keep another machine's passphrase in the private config directory (0600)."""
    config.ensure_private_dir(config.config_dir())
    config.ensure_private_dir(config.config_dir() / PASSPHRASES_DIR)
    path = _passphrase_path(source.machine_id)
    config.write_private(path, (passphrase + "\n").encode("ascii"))
    return path


def passphrase_needed(source: Source) -> PassphraseNeeded:
    if source.own:
        return PassphraseNeeded(
            "this machine's encryption passphrase is not saved on it; pass --passphrase-file "
            "FILE, or save it with haven-agent configure --passphrase-file FILE"
        )
    return PassphraseNeeded(
        f"this machine does not know the passphrase of {source.machine_name!r}. On this "
        f"machine, run: haven-agent recovery-passphrase --from-machine {source.machine_name!r} "
        "(the passphrase is typed here and never leaves the machine)"
    )


# -- opening ----------------------------------------------------------------------------------
def open_store(source: Source, settings):
    from agents.runtime.checks import open_store as open_grant_store

    if not source.grant:
        raise RecoveryError(
            f"no storage grant for {source.machine_name!r}; run haven-agent check to renew it"
        )
    return open_grant_store(
        source.grant,
        proxies=settings.proxies(),
        bandwidth_limit=getattr(settings, "bandwidth_limit", 0),
    )


def open_repository(store, passphrase: str):
    """``Repository.open``: ``WrongPassphrase`` before anything is read or written."""
    from agents.runtime.engine import Repository

    return Repository.open(store, passphrase)
