"""Recover Data, the portal's side: questions to agents, their answers, restore and
download jobs, and the read-only grant that lets one machine read another's backups.

What the portal keeps, and where (docs/restore.md):

* Questions (recovery points, a folder, a name search, a file's versions) are sent to the
  *target* machine's agent with a random ``request_id``; the request (who asked, which
  machines) sits in the cache for ``REQUEST_TTL``; the agent's answer — file names in clear —
  sits in the cache for ``ANSWER_TTL`` and is never written to the database.
* A restore is a ``Job`` (operation restore) on the target machine. Its ``details`` hold the
  source machine, the recovery point, how many items, the options and whether the location is
  the original one — not the selected paths or the folder: those travel only in the signed
  task message. (Names of files that could *not* be restored come back as job warnings, as
  for backups.)
* A download is a restore Job with ``details.kind = "download"`` (the audit trail: who, when,
  which machine and point, how many files and bytes) and an ``haven.audit`` log line; the
  archive is kept in the portal's storage (container ``haven-downloads``, so any portal
  process serves it) for ``DOWNLOAD_TTL`` and served only to its requester.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import re
import secrets
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.http import Http404
from django.utils import timezone

from agents import dispatch
from agents.api_auth import CACHE_ERRORS
from agents.models import Machine, SourceGrantAuthorisation
from agents.runtime import protocol
from agents.runtime.blobstore import BlobExists, BlobNotFound, StorageError
from agents.runtime.protocol import DOWNLOAD_MAX_BYTES, SYSTEM_STATE_PATH
from jobs.models import Job, RecoveryPoint
from jobs.services import job_publish
from jobs.services.replication import point_replicated, replicated_manifests
from portal.access import for_user, get_for_user, has_role
from portal.models import Role
from vaults import activity, storage
from vaults.activity import Operation, Outcome
from vaults.storage.replicas import secondary_for

log = logging.getLogger(__name__)
audit = logging.getLogger("haven.audit")

REQUEST_TTL = 300
# What question_ask's request ids look like (secrets.token_urlsafe(16)); anything else in a
# URL is no request of ours, answered without a cache round trip.
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{22}")
ANSWER_TTL = 120
DOWNLOAD_TTL = 15 * 60
SOURCE_GRANT_LIFETIME = timedelta(hours=1)
# How long a person's say-so lets the target read another machine's container: a question
# (browse, search, versions: the agent may reuse the opened repository for a few minutes),
# a restore or download job (while it is queued or running, at most this long), vault
# credentials presented on the target's command line (one command's worth).
QUESTION_AUTHORISATION = timedelta(minutes=15)
JOB_AUTHORISATION = timedelta(hours=24)
COMMAND_AUTHORISATION = timedelta(hours=1)
SYSTEM_STATE = SYSTEM_STATE_PATH  # the recovery point's System State part, chosen by name
ROLE = Role.BACKUP_OPERATOR  # file names are as sensitive as the data: not for Readers
# The wizard's words for the restore's conflict choices (the choices are the wire's).
CONFLICTS = {
    protocol.CONFLICT_COPY: "Create copies so that you have both versions",
    protocol.CONFLICT_OVERWRITE: "Overwrite the existing versions with the recovered versions",
    protocol.CONFLICT_SKIP: "Do not recover the items that already exist",
}
KINDS = ("points", "browse", "search", "versions")
AGENT_TASKS = {
    "points": protocol.RECOVERY_POINTS_TASK,
    "browse": protocol.BROWSE_TASK,
    "search": protocol.SEARCH_TASK,
    "versions": protocol.VERSIONS_TASK,
    "restore": protocol.RESTORE_TASK,
    "download": protocol.DOWNLOAD_TASK,
}


class RecoveryRefused(Exception):
    """The request cannot be made; the message is for the person."""


class SourceNotAuthorised(RecoveryRefused):
    """No person has authorised this machine to read that one's backups (now)."""

    def __init__(self, message: str, code: str = "not_authorised", status: int = 403):
        super().__init__(message)
        self.code = code
        self.status = status


# -- loading ----------------------------------------------------------------------------------
# A machine's data outlives its registration: every machine that ever had a container in the
# vault stays a *source* of Recover Data (registered, unregistered, or replaced by a newer
# registration with ``register --replace``); only a registered machine is a *target*, since
# its agent does the work.
def _sources():
    return Machine.objects.select_related("vault", "replaced_by").exclude(container="")


def machine_for_user(user, machine_id, *, role: str = ROLE) -> Machine:
    """A registered machine the user may recover (404 for outsiders, 403 for Readers)."""
    qs = Machine.objects.select_related("vault").filter(unregistered_at__isnull=True)
    return get_for_user(user, qs, role=role, pk=machine_id)


def source_for_user(user, machine_id, *, role: str = ROLE) -> Machine:
    """A machine whose backups the user may recover, registered or gone (404 for
    outsiders, 403 for Readers)."""
    return get_for_user(user, _sources(), role=role, pk=machine_id)


def pair_for_user(user, source_id, target_id) -> tuple[Machine, Machine]:
    source = source_for_user(user, source_id)
    target = source if str(target_id) == str(source.pk) else source_for_user(user, target_id)
    if target.is_gone:
        raise RecoveryRefused(
            f"{target.name} is no longer registered ({target.gone_label}): no agent runs "
            f"there to do the work. Recover {source.name}'s data onto a registered machine of "
            f"{source.vault.name}."
        )
    if target.vault_id != source.vault_id:
        raise RecoveryRefused(
            f"{target.name} is registered to another vault; data can be recovered only onto "
            f"machines of {source.vault.name}."
        )
    return source, target


def targets_for(source: Machine):
    """Machines data of ``source`` may be recovered onto: itself first (while registered),
    then its vault's other registered machines."""
    others = Machine.objects.filter(vault_id=source.vault_id, unregistered_at__isnull=True)
    mine = [] if source.is_gone else [source]
    return [*mine, *others.exclude(pk=source.pk).order_by("name")]


def sources_for_user(user) -> list[Machine]:
    """The source list of Recover Data, per vault: the registered machines the user may
    recover (by name), then the gone ones that still hold a recovery point (most recently
    gone first), each marked with ``gone_label``; ``latest_point_at`` on each."""
    kept = RecoveryPoint.objects.filter(machine=models.OuterRef("pk"), removed_at__isnull=True)
    machines = (
        for_user(user, _sources())
        .annotate(
            latest_point_at=models.Subquery(kept.order_by("-created_at").values("created_at")[:1])
        )
        .filter(models.Q(unregistered_at__isnull=True) | models.Q(latest_point_at__isnull=False))
        .order_by(
            "vault__name",
            models.F("unregistered_at").desc(nulls_first=True),
            "name",
        )
    )
    allowed: dict = {}
    out = []
    for m in machines:
        sub = m.vault.subscription_id
        if sub not in allowed:
            allowed[sub] = has_role(user, sub, ROLE)
        if allowed[sub]:
            out.append(m)
    return out


def recovery_points(source: Machine):
    return RecoveryPoint.objects.filter(machine=source, removed_at__isnull=True).order_by(
        "-created_at"
    )


def recovery_days(source: Machine, *, months: int, tz) -> list[tuple[date, int]]:
    """The days (in ``tz``, oldest first) of the newest ``months`` months that hold any of
    ``source``'s points, with how many each holds: the wizard's calendar. A machine backed
    up hourly for years has tens of thousands of points; this is a row a day, at most
    ``months`` months of days. Two queries."""
    from django.db.models.functions import TruncDate, TruncMonth

    starts = list(
        recovery_points(source)
        .annotate(month=TruncMonth("created_at", tzinfo=tz))
        .order_by("-month")
        .values_list("month", flat=True)
        .distinct()[:months]
    )
    if not starts:
        return []
    return list(
        recovery_points(source)
        .filter(created_at__gte=starts[-1])
        .annotate(day=TruncDate("created_at", tzinfo=tz))
        .order_by("day")
        .values("day")
        .annotate(n=models.Count("pk"))
        .values_list("day", "n")
    )


def recovery_points_on(source: Machine, *, day: date, tz) -> list[RecoveryPoint]:
    """``source``'s points of ``day`` in ``tz`` (oldest first), the columns the wizard's
    times show. One query."""
    after = day + timedelta(days=1)
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    end = datetime(after.year, after.month, after.day, tzinfo=tz)
    return list(
        recovery_points(source)
        .filter(created_at__gte=start, created_at__lt=end)
        .order_by("created_at")
        .only(
            "snapshot_id",
            "created_at",
            "kind",
            "logical_bytes",
            "file_count",
            "verify_damaged_at",
            "verify_damage",
        )
    )


def replicated_point_ids(source: Machine) -> set[str]:
    """The snapshot ids of ``source``'s points on the secondary copy (one listing of its
    manifests there); raises ``RecoveryRefused`` when the secondary cannot be read."""
    try:
        manifests = replicated_manifests(source)
    except StorageError as exc:
        raise RecoveryRefused(f"The secondary copy cannot be read now: {exc}") from None
    return {name.rsplit("/", 1)[-1] for name in manifests}


# -- questions and answers --------------------------------------------------------------------
@dataclass
class Question:
    request_id: str
    kind: str


# Restore and download jobs go through agents.dispatch.send_after_commit (its outbox keeps
# the message until the broker takes it); questions, which a person waits for, through
# dispatch.ask_now (no outbox: a broker that refuses is said at once). Called through these
# names, which tests/recovery/conftest.py replaces.
_send = dispatch.send_after_commit
_ask = dispatch.ask_now


def question_ask(
    *,
    user,
    source: Machine,
    target: Machine,
    kind: str,
    region: str = protocol.REGION_PRIMARY,
    **args,
) -> Question:
    """Ask ``target``'s agent about ``source``'s backups (in ``region``'s copy); the answer
    comes to the cache."""
    if kind not in KINDS:
        raise ValueError(kind)
    _refuse_deleted(source)
    region = region_check(source.vault, region)
    if region == protocol.REGION_SECONDARY:
        args["source_region"] = region
    request_id = secrets.token_urlsafe(16)
    _authorise_from_portal(
        user=user, source=source, target=target, lifetime=QUESTION_AUTHORISATION,
        request_id=request_id,
    )  # fmt: skip
    try:
        cache.set(
            f"recovery:req:{request_id}",
            {
                "user": user.pk,
                "source": str(source.pk),
                "target": str(target.pk),
                "kind": kind,
                "asked": time.time(),
            },
            REQUEST_TTL,
        )
    except CACHE_ERRORS as exc:
        raise RecoveryRefused(
            f"The portal's cache is unreachable ({exc}), so it could not ask {target.name}. "
            "Try again in a minute; if it keeps failing, check that Redis is running and "
            "reachable from the portal."
        ) from None
    try:
        _ask(
            target,
            AGENT_TASKS[kind],
            request_id=request_id,
            source_machine_id="" if source.pk == target.pk else str(source.pk),
            **args,
        )
    except dispatch.BrokerUnreachable as exc:
        raise RecoveryRefused(
            f"The portal could not reach the message broker, so the question was not sent to "
            f"{target.name} ({exc}). Try again in a minute; if it keeps failing, check that "
            "Redis is running and reachable from the portal."
        ) from None
    return Question(request_id, kind)


def _request_key(request_id: str) -> str | None:
    return f"recovery:req:{request_id}" if REQUEST_ID.fullmatch(request_id) else None


def question_for_user(user, request_id: str) -> dict | None:
    if _request_key(request_id) is None:
        return None
    request = cache.get(f"recovery:req:{request_id}")
    if request is None or request["user"] != user.pk:
        return None
    return request


def answer_store(*, machine: Machine, request_id: str, body: dict) -> bool:
    """The agent's answer to one of its own machine's requests; False when unknown."""
    if _request_key(request_id) is None:
        return False
    request = cache.get(f"recovery:req:{request_id}")
    if request is None or request["target"] != str(machine.pk):
        return False
    cache.set(f"recovery:answer:{request_id}", body, ANSWER_TTL)
    return True


def answer_get(request_id: str) -> dict | None:
    if _request_key(request_id) is None:
        return None
    return cache.get(f"recovery:answer:{request_id}")


# -- the read-only grant for another machine's repository ---------------------------------------
def _authorise_from_portal(
    *, user, source: Machine, target: Machine, lifetime: timedelta, job=None, request_id=""
) -> SourceGrantAuthorisation | None:
    """Record that ``user`` (who has the Recover Data role: the view loaded both machines
    with it) lets ``target`` read ``source``'s backups for this request."""
    if source.pk == target.pk:
        return None
    row = SourceGrantAuthorisation.objects.create(
        source=source,
        target=target,
        authorised_by=user,
        via=SourceGrantAuthorisation.Via.PORTAL,
        job_id=job.pk if job is not None else None,
        request_id=request_id,
        expires_at=timezone.now() + lifetime,
    )
    audit.info(
        "read authorised: user %s lets machine %s (%s) read the backups of %s (%s) until %s (%s)",
        user.get_username(), target.name, target.pk, source.name, source.pk,
        row.expires_at.isoformat(timespec="seconds"), f"job {job.pk}" if job else "question",
    )  # fmt: skip
    return row


def _authorise_from_credentials(
    *, source: Machine, target: Machine, content: bytes
) -> SourceGrantAuthorisation:
    """Vault credentials presented on ``target``'s command line: downloaded for this vault
    after ``target`` registered (not the file it registered with, nor one left on it since
    before) by someone who has the Recover Data role then and now."""
    from vaults import credentials as vc

    try:
        credential = vc.credentials_verify(content)
        if credential.vault_id != target.vault_id:
            raise SourceNotAuthorised(
                f"These vault credentials are for vault {credential.vault.name}; "
                f"{target.name} is registered to {target.vault.name}. Download credentials "
                "of that vault.",
                "foreign",
            )
        vc.credentials_role_check(credential, ROLE, doing="Reading another machine's backups")
    except vc.CredentialsMalformed as exc:
        raise SourceNotAuthorised(str(exc), "malformed", 400) from None
    except vc.CredentialsError as exc:
        raise SourceNotAuthorised(str(exc), "credentials_refused") from None
    # (issued_at is whole seconds; no file registers a machine within its first second)
    if credential.issued_at < target.registered_at.replace(microsecond=0):
        raise SourceNotAuthorised(
            f"These vault credentials were downloaded on {credential.issued_at:%Y-%m-%d %H:%M} "
            f"UTC, before {target.name} registered: reading another machine's backups needs "
            "credentials downloaded for it. Download fresh vault credentials (vault › Backup › "
            "Prepare infrastructure) and pass them with --vault-credentials FILE.",
            "credentials_stale",
        )
    row = SourceGrantAuthorisation.objects.create(
        source=source,
        target=target,
        authorised_by=credential.issued_by,
        via=SourceGrantAuthorisation.Via.CREDENTIALS,
        credential_id=credential.pk,
        expires_at=min(timezone.now() + COMMAND_AUTHORISATION, credential.expires_at),
    )
    audit.info(
        "read authorised: credentials %s of user %s let machine %s (%s) read the backups of "
        "%s (%s) until %s",
        credential.pk, credential.issued_by.get_username(), target.name, target.pk,
        source.name, source.pk, row.expires_at.isoformat(timespec="seconds"),
    )  # fmt: skip
    return row


def _live_authorisation(*, source: Machine, target: Machine) -> SourceGrantAuthorisation | None:
    """The longest-lived authorisation for the pair whose request still stands and whose
    person still has the role."""
    rows = (
        SourceGrantAuthorisation.objects.select_related("authorised_by")
        .filter(source=source, target=target, expires_at__gt=timezone.now())
        .order_by("-expires_at")
    )
    for row in rows:
        if row.job_id and not Job.objects.filter(pk=row.job_id, status__in=Job.ACTIVE).exists():
            continue
        person = row.authorised_by
        if person is None or not has_role(person, target.vault.subscription_id, ROLE):
            continue
        return row
    return None


@dataclass
class SourceFound:
    """Which machine a command line's ``--from-machine`` / ``--from-machine-id`` means, and
    the other machines of that name it could have meant (docs/agent.md, "Which machine a
    name means")."""

    machine: Machine
    others: list[Machine]


def _find_source(machine: Machine, source_ref: str = "", *, source_id: str = "") -> SourceFound:
    """The source a target names: by id (``source_id``, or a ``source_ref`` that is one of
    the vault's machine ids), else by name among every machine of the vault that ever had a
    container. A name means the machine that holds it now (registered), else the one that
    held it last (most recently unregistered or replaced) — never the asking machine itself
    while another machine of that name exists, so on a machine registered with ``--replace``
    under its old name, the name means the old machine. The rest are ``others``."""
    qs = _sources().filter(vault_id=machine.vault_id)
    ref = source_id or source_ref
    try:
        source = qs.filter(pk=ref).first()
    except ValidationError:  # not a UUID: a name
        source = None
    if source is not None:
        return SourceFound(source, [])
    if source_id:
        raise RecoveryRefused(f"No machine with id {source_id!r} has storage in this vault.")
    named = list(
        qs.filter(name__iexact=source_ref).order_by(
            models.F("unregistered_at").desc(nulls_first=True), "-registered_at"
        )
    )
    others = [m for m in named if m.pk != machine.pk]
    if not others:
        if named:  # its own name, and no other machine ever had it
            return SourceFound(named[0], [])
        raise RecoveryRefused(
            f"No machine named {source_ref!r} is or was registered to this vault."
        )
    return SourceFound(others[0], others[1:])


def machine_summary(machine: Machine) -> dict:
    """A source machine on the wire (the grant's answer): who it is and whether it is gone."""
    latest = recovery_points(machine).values_list("created_at", flat=True).first()
    return {
        "id": str(machine.pk),
        "name": machine.name,
        "registered_at": machine.registered_at.isoformat(timespec="seconds"),
        "unregistered_at": (
            machine.unregistered_at.isoformat(timespec="seconds")
            if machine.unregistered_at
            else None
        ),
        "state": machine.gone_label or "Registered",
        "latest_point": latest.isoformat(timespec="seconds") if latest else None,
    }


def _authorisation_for(
    *, source: Machine, target: Machine, credentials: bytes | None
) -> SourceGrantAuthorisation:
    if credentials:
        return _authorise_from_credentials(source=source, target=target, content=credentials)
    row = _live_authorisation(source=source, target=target)
    if row is None:
        raise SourceNotAuthorised(
            f"No one has authorised {target.name} to read {source.name}'s backups. Start "
            "the recovery in the portal (Recover Data), or on this machine pass "
            "--vault-credentials FILE with vault credentials freshly downloaded by a "
            "Backup Operator, Contributor or Owner of the vault's subscription."
        )
    return row


def region_check(vault, region: str) -> str:
    """``region`` when ``vault`` may be recovered from it (``RecoveryRefused`` otherwise)."""
    region = region or protocol.REGION_PRIMARY
    if region not in protocol.REGIONS:
        raise RecoveryRefused("Choose the primary or the secondary region.")
    if region == protocol.REGION_SECONDARY:
        if not vault.cross_region_restore:
            raise RecoveryRefused(
                f"Cross Region Restore is not enabled for vault {vault.name} (vault › "
                "Properties › Cross Region Restore)."
            )
        if secondary_for(vault) is None:
            raise RecoveryRefused(
                "The vault's secondary copy is not available on this portal: "
                + (storage.secondary_unavailable_reason() or "the vault has no secondary copy.")
            )
    return region


def _grant_account(vault, region: str):
    if region == protocol.REGION_SECONDARY:
        account = secondary_for(vault)
        if account is not None:
            return account
    return storage.primary_account()


def source_grant(
    *,
    machine: Machine,
    source_ref: str = "",
    source_id: str = "",
    credentials: bytes | None = None,
    region: str = protocol.REGION_PRIMARY,
) -> tuple[SourceFound, dict]:
    """A read-and-list grant to the container of the source ``source_ref`` (id or name) or
    ``source_id`` names in ``machine``'s vault — registered or gone (``_find_source``), in the
    primary storage or (``region`` secondary, Cross Region Restore) the secondary copy.

    Another machine's container only against a live ``SourceGrantAuthorisation`` (made now
    from ``credentials`` when given), the grant expiring no later than it; every grant
    issued is logged. Raises ``RecoveryRefused`` (no such machine, region not allowed) or
    ``SourceNotAuthorised``.
    """
    found = _find_source(machine, source_ref, source_id=source_id)
    source = found.machine
    region = region_check(machine.vault, region)
    account = _grant_account(machine.vault, region)
    _refuse_deleted(source)
    expires_at = timezone.now() + SOURCE_GRANT_LIFETIME
    if source.pk == machine.pk:
        return found, account.issue_grant(source.container, expires_at=expires_at, permissions="rl")
    try:
        with transaction.atomic():
            row = _authorisation_for(source=source, target=machine, credentials=credentials)
            SourceGrantAuthorisation.objects.filter(pk=row.pk).update(
                grants_issued=models.F("grants_issued") + 1, last_granted_at=timezone.now()
            )
    except SourceNotAuthorised as exc:
        audit.warning(
            "read refused: machine %s (%s) asked for the backups of %s (%s): %s",
            machine.name, machine.pk, source.name, source.pk, exc.code,
        )  # fmt: skip
        activity.record(
            operation=Operation.RESTORE_START,
            vault=machine.vault,
            actor=f"machine {machine.name}",
            resource=source,
            outcome=Outcome.REFUSED,
            reason=str(exc),
            detail={"via": "command line", "target": machine.name},
        )
        raise
    if credentials:
        # A new authorisation from vault credentials on the machine's command line: the
        # start of a restore (or listing) of another machine's backups.
        activity.record(
            operation=Operation.RESTORE_START,
            user=row.authorised_by,
            vault=machine.vault,
            actor=f"machine {machine.name}",
            resource=source,
            detail={
                "via": "command line",
                "target": machine.name,
                "credentials": str(row.credential_id)[:8],
            },
        )
    grant = account.issue_grant(
        source.container, expires_at=min(expires_at, row.expires_at), permissions="rl"
    )
    audit.info(
        "read grant: machine %s (%s) may read the backups of %s (%s%s) in vault %s (%s copy) "
        "until %s, authorised by %s (%s, authorisation %s)",
        machine.name, machine.pk, source.name, source.pk,
        f", {source.gone_label.lower()}" if source.is_gone else "", machine.vault_id, region,
        grant["expires_at"], row.authorised_by.get_username() if row.authorised_by else "?",
        row.via, row.pk,
    )  # fmt: skip
    return found, grant


def cli_source_option(*, source: Machine, target: Machine) -> tuple[str, str]:
    """The option naming ``source`` on ``target``'s command line: (``--from-machine``,
    NAME) when the name means that machine there, else (``--from-machine-id``, ID)."""
    try:
        found = _find_source(target, source.name)
    except RecoveryRefused:
        found = None
    if found is not None and found.machine.pk == source.pk:
        return "--from-machine", source.name
    return "--from-machine-id", str(source.pk)


# -- restore and download jobs ----------------------------------------------------------------
def _new_job(*, user, source, target, details: dict) -> Job:
    status = Job.Status.QUEUED if target.is_online() else Job.Status.WAITING
    return Job.objects.create(
        vault_id=target.vault_id,
        machine=target,
        operation=Job.Operation.RESTORE,
        status=status,
        created_by=user,
        details={"source_machine": str(source.pk), "source_name": source.name, **details},
    )


def _refuse_deleted(source: Machine) -> None:
    """A soft-deleted (or deleted) item's points are not restorable (docs/protection.md)."""
    from jobs.services.protection import restore_refusal

    refusal = restore_refusal(source)
    if refusal:
        raise SourceNotAuthorised(refusal, "soft_deleted", 409)


def _check_point(source: Machine, recovery_point: str) -> RecoveryPoint:
    _refuse_deleted(source)
    point = recovery_points(source).filter(snapshot_id=recovery_point).first()
    if point is None:
        raise RecoveryRefused("Choose a recovery point of this machine.")
    return point


def _check_region_point(source: Machine, point: RecoveryPoint, region: str) -> str:
    """``region`` if ``point`` can be read there: from the secondary, only once replication
    copied its manifest (and so, in write order, everything it needs)."""
    region = region_check(source.vault, region)
    if region != protocol.REGION_SECONDARY:
        return region
    try:
        copied = point_replicated(point)
    except StorageError as exc:
        raise RecoveryRefused(f"The secondary copy cannot be read now: {exc}") from None
    if not copied:
        raise RecoveryRefused(
            f"The recovery point of {point.created_at:%Y-%m-%d %H:%M} UTC has not been copied "
            "to the secondary region yet, so it cannot be restored from there. Restore it "
            "from the primary region, or choose an older point (replication catches up "
            "within minutes: see the lag on the vault's Overview)."
        )
    return region


def _region_details(region: str) -> dict:
    return {"region": region} if region == protocol.REGION_SECONDARY else {}


def _region_args(region: str) -> dict:
    return {"source_region": region} if region == protocol.REGION_SECONDARY else {}


def is_system_state(path: str) -> bool:
    """``path`` is the System State part of a recovery point, or inside it."""
    return path == SYSTEM_STATE or path.startswith(SYSTEM_STATE + "/")


def _clean_paths(paths: list[str]) -> list[str]:
    """Absolute paths as backed up, or the System State part (``system-state``)."""
    out = []
    for p in paths:
        p = (p or "").strip()
        if not (p.startswith("/") or is_system_state(p)) or "\0" in p:
            raise RecoveryRefused("Choose the files and folders to recover.")
        out.append(p)
    if not out:
        raise RecoveryRefused("Choose at least one file or folder to recover.")
    return sorted(set(out))


def _system_state_folder(folder: str) -> str:
    """The folder System State is restored into: named, and never / or /etc (the restore
    writes FOLDER/system-state/...; laid over a running system it would do harm)."""
    if not folder:
        raise RecoveryRefused(
            "System State is restored to a folder you name, never over the running system: "
            "choose Another location and type a folder, like /srv/restored."
        )
    normal = posixpath.normpath(folder)
    if normal in ("/", "//") or normal == "/etc" or normal.startswith("/etc/"):
        raise RecoveryRefused(
            f"System State cannot be restored into {folder}: choose an empty folder outside "
            "/ and /etc, like /srv/restored, and copy back from there what you need "
            "(its README.md says how)."
        )
    return folder


def _record_start(operation: str, *, user, source: Machine, target: Machine, job: Job) -> None:
    """The activity log's entry for a restore or download: the resource is the machine whose
    backups are read."""
    activity.record(
        operation=operation,
        user=user,
        vault=source.vault,
        resource=source,
        detail={
            "job": str(job.pk),
            "target": target.name,
            "recovery_point": job.details["recovery_point"],
            "recovery_point_time": job.details["recovery_point_time"],
            "items": job.details["items"],
        },
    )


@transaction.atomic
def restore_start(
    *,
    user,
    source: Machine,
    target: Machine,
    recovery_point: str,
    paths: list[str],
    folder: str = "",
    on_conflict: str = protocol.CONFLICT_COPY,
    restore_permissions: bool = False,
    region: str = protocol.REGION_PRIMARY,
) -> Job:
    """Queue a Restore job on ``target``: ``folder`` empty = the original location;
    ``region`` secondary reads the secondary copy (Cross Region Restore)."""
    point = _check_point(source, recovery_point)
    region = _check_region_point(source, point, region)
    paths = _clean_paths(paths)
    if on_conflict not in protocol.CONFLICT_CHOICES:
        raise RecoveryRefused("Choose what to do when an item already exists.")
    folder = (folder or "").strip()
    if folder and (not folder.startswith("/") or "\0" in folder):
        raise RecoveryRefused("Type the folder as an absolute path, like /srv/restored.")
    system_state = any(is_system_state(p) for p in paths)
    if system_state:
        folder = _system_state_folder(folder)
    job = _new_job(
        user=user,
        source=source,
        target=target,
        details={
            "kind": "restore",
            "recovery_point": point.snapshot_id,
            "recovery_point_time": point.created_at.isoformat(),
            "items": len(paths),
            "location": "another" if folder else "original",
            "on_conflict": on_conflict,
            "restore_permissions": bool(restore_permissions),
            **_region_details(region),
            **({"system_state": True} if system_state else {}),
        },
    )
    _authorise_from_portal(
        user=user, source=source, target=target, lifetime=JOB_AUTHORISATION, job=job
    )
    _record_start(Operation.RESTORE_START, user=user, source=source, target=target, job=job)
    _send(
        target,
        AGENT_TASKS["restore"],
        job_id=str(job.pk),
        recovery_point=point.snapshot_id,
        paths=paths,
        target=folder or "/",
        on_conflict=on_conflict,
        restore_permissions=bool(restore_permissions),
        source_machine_id="" if source.pk == target.pk else str(source.pk),
        **_region_args(region),
    )
    job_publish(job)
    return job


@transaction.atomic
def download_start(
    *,
    user,
    source: Machine,
    target: Machine,
    recovery_point: str,
    paths,
    region: str = protocol.REGION_PRIMARY,
) -> Job:
    """Queue a download: ``target``'s agent reads the files and streams a small archive."""
    point = _check_point(source, recovery_point)
    region = _check_region_point(source, point, region)
    paths = _clean_paths(paths)
    job = _new_job(
        user=user,
        source=source,
        target=target,
        details={
            "kind": "download",
            "recovery_point": point.snapshot_id,
            "recovery_point_time": point.created_at.isoformat(),
            "items": len(paths),
            "max_bytes": DOWNLOAD_MAX_BYTES,
            **_region_details(region),
        },
    )
    _authorise_from_portal(
        user=user, source=source, target=target, lifetime=JOB_AUTHORISATION, job=job
    )
    _record_start(Operation.DOWNLOAD_START, user=user, source=source, target=target, job=job)
    _send(
        target,
        AGENT_TASKS["download"],
        job_id=str(job.pk),
        recovery_point=point.snapshot_id,
        paths=paths,
        max_bytes=DOWNLOAD_MAX_BYTES,
        source_machine_id="" if source.pk == target.pk else str(source.pk),
        **_region_args(region),
    )
    job_publish(job)
    audit.info(
        "download requested: user %s, job %s, %d item(s) of %s at %s through %s",
        user.get_username(), job.pk, len(paths), source.name, point.snapshot_id, target.name,
    )  # fmt: skip
    return job


# Downloads live in the portal's storage (the ``haven-downloads`` container of the primary
# account), not on one portal's disk, so any portal serves what another one received:
# ``<job>/parts/<attempt>/<n>`` blobs of at most DOWNLOAD_PART_BYTES, then the manifest
# ``<job>/archive.json`` (size and part names), written last, so a reader sees a whole archive
# or none. Neither direction holds more than a part in memory.
DOWNLOAD_PART_BYTES = 4 * 1024 * 1024
_READ_BLOCK = 1024 * 1024


def _manifest_name(job_id) -> str:
    return f"{job_id}/archive.json"


@dataclass(frozen=True)
class DownloadArchive:
    """A finished download in storage; ``chunks``/``async_chunks`` read it a block at a time."""

    job_id: str
    size: int
    parts: tuple[str, ...]
    received_at: float

    def chunks(self):
        store = storage.downloads_store()
        try:
            for name in self.parts:
                offset = 0
                while block := store.get_range(name, offset, _READ_BLOCK):
                    offset += len(block)
                    yield block
        finally:
            store.close()

    async def async_chunks(self):
        """For an ASGI server: each block is read in a thread, none is held past its send."""
        from asgiref.sync import sync_to_async

        blocks = self.chunks()
        take = sync_to_async(next, thread_sensitive=False)
        while (block := await take(blocks, None)) is not None:
            yield block


def _archive(store, job_id) -> DownloadArchive | None:
    try:
        manifest = json.loads(store.get(_manifest_name(job_id)))
    except BlobNotFound:
        return None
    return DownloadArchive(
        job_id=str(job_id),
        size=int(manifest["size"]),
        parts=tuple(manifest["parts"]),
        received_at=float(manifest["received_at"]),
    )


def _delete_blobs(store, names) -> None:
    for name in names:
        with contextlib.suppress(BlobNotFound):
            store.delete(name)


def downloads_purge(*, now: float | None = None) -> int:
    """Delete downloads older than ``DOWNLOAD_TTL`` (and uploads abandoned that long ago);
    returns how many jobs' archives went."""
    now = now or time.time()
    jobs: dict[str, list] = {}
    with storage.downloads_store() as store:
        for info in store.list():
            jobs.setdefault(info.name.split("/", 1)[0], []).append(info)
        removed = 0
        for job_id, blobs in jobs.items():
            manifest = [b for b in blobs if b.name == _manifest_name(job_id)]
            since = manifest[0] if manifest else max(blobs, key=lambda b: b.modified)
            if now - since.modified.timestamp() <= DOWNLOAD_TTL:
                continue
            # The manifest first: a reader never finds one whose parts are gone.
            _delete_blobs(store, [b.name for b in manifest])
            _delete_blobs(store, [b.name for b in blobs if b not in manifest])
            removed += 1
    return removed


def download_receive(*, machine: Machine, job: Job, stream, length: int) -> int:
    """Store the archive the agent streams for ``job`` (size-limited); returns its size.
    ``StorageError`` when the portal's storage cannot take it (the agent may try again)."""
    if job.machine_id != machine.pk or job.details.get("kind") != "download":
        raise RecoveryRefused("No download job of this machine.")
    if job.status not in Job.ACTIVE:
        raise RecoveryRefused("This download is no longer wanted.")
    if length > DOWNLOAD_MAX_BYTES:
        raise RecoveryRefused("The archive is larger than a download may be.")
    downloads_purge()
    prefix = f"{job.pk}/parts/{secrets.token_hex(8)}/"
    parts: list[str] = []
    size = 0
    buffer = bytearray()
    with storage.downloads_store() as store:

        def flush() -> None:
            name = f"{prefix}{len(parts):05d}"
            store.put(name, bytes(buffer[:DOWNLOAD_PART_BYTES]))
            parts.append(name)
            del buffer[:DOWNLOAD_PART_BYTES]

        try:
            while True:
                block = stream.read(min(_READ_BLOCK, length - size)) if length > size else b""
                if not block:
                    break
                size += len(block)
                if size > DOWNLOAD_MAX_BYTES:
                    raise RecoveryRefused("The archive is larger than a download may be.")
                buffer += block
                while len(buffer) >= DOWNLOAD_PART_BYTES:
                    flush()
            if size != length:
                raise RecoveryRefused("The archive arrived incomplete; try again.")
            if buffer or not parts:
                flush()
            manifest = {"size": size, "parts": parts, "received_at": time.time()}
            store.put(_manifest_name(job.pk), json.dumps(manifest).encode())
        except BlobExists:
            # Another upload of this job finished first (an agent's retry): that one stands.
            _delete_blobs(store, parts)
            existing = _archive(store, job.pk)
            return existing.size if existing else size
        except (RecoveryRefused, StorageError):
            _delete_blobs(store, parts)
            raise
    return size


def download_for_user(user, job_id) -> tuple[Job, DownloadArchive | None]:
    """The requester's finished download (None when expired or not ready)."""
    job = get_for_user(user, Job.objects.select_related("machine", "vault"), role=ROLE, pk=job_id)
    if job.details.get("kind") != "download" or job.created_by_id != user.pk:
        raise Http404("No such download")
    if job.status not in (Job.Status.COMPLETED, Job.Status.WARNING):
        return job, None
    with storage.downloads_store() as store:
        archive = _archive(store, job.pk)
    if archive is None or time.time() - archive.received_at > DOWNLOAD_TTL:
        return job, None
    return job, archive


def download_served(*, user, job: Job, size: int) -> None:
    audit.info("download served: user %s, job %s, %d bytes", user.get_username(), job.pk, size)
