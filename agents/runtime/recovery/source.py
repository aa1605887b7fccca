"""Which repository a recovery reads, and opening it.

Every machine has its own repository in its own container of the vault, encrypted under the
passphrase chosen when it registered. Recovering *this* machine's data uses the machine's own
storage grant and its saved passphrase. Recovering *another* machine's data (to this one) —
the reference's "another server" recovery — needs two things:

* a **read-only grant** to the source machine's container (``POST
  /api/agent/recovery/grant/``, short-lived, permissions ``rl``: it can neither write nor
  delete), which the portal issues only as a person authorised it: a user with the Recover
  Data role who started the browse, restore or download in the portal (the agent's tasks
  need nothing more), or vault credentials that such a user downloaded after this machine
  registered, presented by the command line (``--vault-credentials FILE``, sent as
  ``vault_credentials``) as the reference's *Recover Data › Another server* asks for them;
  and
* the **source machine's passphrase**, typed on this machine (``haven-agent
  recovery-passphrase --from-machine NAME`` or ``--from-machine-id ID``) and kept in the agent's private config directory
  (``recovery-passphrases/<machine id>``, 0600), never sent anywhere. It is checked against the
  repository when typed, so a wrong one is refused at once.

Without the passphrase the grant gives only ciphertext, so the vault stays the trust boundary,
as in the reference (vault credentials + passphrase recover anywhere).

**Cross Region Restore** (``region`` = ``protocol.REGION_SECONDARY``, in the task message): the
recovery reads the geo-redundant vault's secondary copy, through a read-only grant the portal
issues for it (``region`` in the grant request) — for this machine's own backups too, since its
saved grant opens only the primary. The primary storage is never touched, so a restore works
while it is down.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agents.runtime import config, protocol, storage_grant
from agents.runtime import passphrase as pp
from agents.runtime.engine import Repository
from agents.runtime.portal_api import PortalRefused, PortalUnreachable
from agents.runtime.tasks import AgentContext

PASSPHRASES_DIR = "recovery-passphrases"


class RecoveryError(Exception):
    """A recovery cannot go on; ``code`` for programs, the message for people."""

    code = protocol.ANSWER_ERROR


class PassphraseNeeded(RecoveryError):
    code = protocol.ANSWER_PASSPHRASE_NEEDED


class SourceRefused(RecoveryError):
    code = protocol.ANSWER_SOURCE_REFUSED


@dataclass
class Source:
    """The machine whose recovery points are read. ``state`` is the portal's word for a
    machine that is gone ("Unregistered on 2026-12-01", "Replaced by web-01 on …"; ""
    while registered); ``others`` the other machines the name given could have meant
    (the portal's summaries: id, name, state, latest_point); ``region`` which copy is read
    (the secondary one for Cross Region Restore)."""

    machine_id: str
    machine_name: str
    grant: dict = field(repr=False, default_factory=dict)
    own: bool = True
    state: str = ""
    others: list[dict] = field(default_factory=list)
    region: str = protocol.REGION_PRIMARY

    @property
    def option(self) -> str:
        """The command-line option that names this machine without doubt: its name while it
        is registered and the only one of that name, else its id."""
        if self.state or self.others:
            return f"--from-machine-id {self.machine_id}"
        return f"--from-machine {self.machine_name!r}"


def resolve_source(
    *,
    registration,
    portal=None,
    machine: str | None = None,
    machine_id: str | None = None,
    vault_credentials: bytes = b"",
    region: str = protocol.REGION_PRIMARY,
) -> Source:
    """This machine (``machine`` and ``machine_id`` empty, or this machine's id) or another
    machine of the vault — registered, unregistered or replaced — for which the portal hands
    out a read-only grant (as a person authorised: in the portal, or by the
    ``vault_credentials`` file's text). ``region`` secondary: the grant is to the secondary
    copy, for this machine's own backups as well.

    A name goes to the portal even when it is this machine's own: on a machine registered
    with ``--replace`` under its old name, the name means the old machine, whose backups are
    in its own container (the portal's rule: jobs.recovery.services._find_source)."""
    secondary = region == protocol.REGION_SECONDARY
    own = Source(registration.machine_id, registration.machine_name, registration.grant, own=True)
    asks_own = (not machine and not machine_id) or registration.machine_id in (machine, machine_id)
    if asks_own and not secondary:
        return own
    if portal is None:
        if machine == registration.machine_name and not secondary:
            return own
        raise SourceRefused(
            "reading another machine's backups, or the secondary copy, needs the portal (for "
            "a read-only storage grant)"
        )
    if asks_own:
        payload = {"source_machine_id": registration.machine_id}
    elif machine_id:
        payload = {"source_machine_id": machine_id}
    else:
        payload = {"source_machine": machine}
    if secondary:
        payload["region"] = protocol.REGION_SECONDARY
    if vault_credentials:
        payload["vault_credentials"] = vault_credentials.decode("utf-8", "replace")
    try:
        answer = portal.post("recovery/grant/", payload)
    except PortalRefused as exc:
        raise SourceRefused(str(exc)) from None
    except PortalUnreachable:
        if machine == registration.machine_name and not secondary:  # its own backups need no portal
            return own
        raise
    info = answer.get("machine") or {}
    found_id = str(info.get("id") or machine_id or machine)
    region_read = protocol.REGION_SECONDARY if secondary else protocol.REGION_PRIMARY
    if found_id == registration.machine_id and not secondary:
        return own
    gone = info.get("unregistered_at")
    return Source(
        found_id,
        str(info.get("name") or machine or registration.machine_name),
        dict(answer.get("grant") or {}),
        own=found_id == registration.machine_id,
        state=str(info.get("state") or "") if gone else "",
        others=[o for o in answer.get("other_machines") or [] if isinstance(o, dict)],
        region=region_read,
    )


def others_note(source: Source) -> str:
    """When the name given could have meant other machines: which one this is, the others
    and how to pick one ("" when there is no doubt)."""
    if not source.others:
        return ""

    def line(info: dict) -> str:
        latest = info.get("latest_point")
        return (
            f"  {info.get('id')}  {info.get('state') or 'Registered'}"
            f"{f', latest recovery point {latest}' if latest else ', no recovery point'}"
        )

    return "\n".join(
        [
            f"note: {len(source.others) + 1} machines named {source.machine_name!r} backed up "
            f"to this vault; this reads {source.machine_id} "
            f"({source.state or 'registered now'}). The others:",
            *(line(info) for info in source.others),
            "Pick one with --from-machine-id ID.",
        ]
    )


# -- passphrases ------------------------------------------------------------------------------
def _passphrase_path(machine_id: str) -> Path:
    safe = "".join(ch for ch in machine_id if ch.isalnum() or ch in "-_")
    if not safe:
        raise RecoveryError(f"{machine_id!r} is not a machine id")
    return config.config_dir() / PASSPHRASES_DIR / safe


def saved_passphrase(source: Source, settings, extra: dict | None = None) -> str | None:
    if source.own:
        return pp.saved_passphrase(settings, extra)
    extra = extra or {}
    if extra.get("passphrases", {}).get(source.machine_id):
        return extra["passphrases"][source.machine_id]
    path = _passphrase_path(source.machine_id)
    return pp.read_file(path) if path.exists() else None


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
        f"machine, run: haven-agent recovery-passphrase {source.option} "
        "(the passphrase is typed here and never leaves the machine; right after a request "
        "in the portal, or else with --vault-credentials FILE: freshly downloaded vault "
        "credentials)"
    )


# -- opening ----------------------------------------------------------------------------------
def open_store(source: Source, settings):
    if not source.grant:
        raise RecoveryError(
            f"no storage grant for {source.machine_name!r}; run haven-agent check to renew it"
        )
    return storage_grant.open_with_settings(source.grant, settings)


def open_repository(store, passphrase: str):
    """``Repository.open``: ``WrongPassphrase`` before anything is read or written."""
    return Repository.open(store, passphrase)


# -- for the agent's tasks --------------------------------------------------------------------
REPO_TTL = 300.0  # an opened repository (keys, index) is reused for browsing this long
_opened: dict[str, tuple[float, Repository]] = {}
_opened_lock = threading.Lock()


def _task_source(ctx: AgentContext, source_machine_id: str | None, region: str) -> Source:
    source = resolve_source(
        registration=ctx.registration,
        portal=ctx.portal,
        machine_id=source_machine_id or None,
        region=region or protocol.REGION_PRIMARY,
    )
    if source.region != protocol.REGION_PRIMARY:
        return source
    if source.own and ctx.portal is not None and "open_store" not in ctx.extra:
        storage_grant.renew_grant(ctx.registration, ctx.portal, save=False)
        source.grant = ctx.registration.grant
    return source


def _task_store(ctx: AgentContext, source: Source):
    if "open_store_for" in ctx.extra:
        return ctx.extra["open_store_for"](source.machine_id)
    if source.own and source.region == protocol.REGION_PRIMARY and "open_store" in ctx.extra:
        return ctx.extra["open_store"]()
    return open_store(source, ctx.settings)


def open_for_task(
    ctx: AgentContext,
    source_machine_id: str | None,
    *,
    cached: bool = True,
    region: str = protocol.REGION_PRIMARY,
) -> tuple[Repository, Source]:
    """The repository a task reads (this machine's, or ``source_machine_id``'s, in the
    primary storage or the secondary copy) and its source; for browsing, an opened
    repository is kept ``REPO_TTL`` seconds."""
    source = _task_source(ctx, source_machine_id, region)
    key = f"{source.machine_id}:{source.region}"
    if cached:
        with _opened_lock:
            hit = _opened.get(key)
            if hit and hit[0] > time.monotonic():
                return hit[1], source
    secret = saved_passphrase(source, ctx.settings, ctx.extra)
    if not secret:
        raise passphrase_needed(source)
    repo = open_repository(_task_store(ctx, source), secret)
    if cached:
        with _opened_lock:
            _opened[key] = (time.monotonic() + REPO_TTL, repo)
    return repo, source


def forget_opened() -> None:
    with _opened_lock:
        _opened.clear()
