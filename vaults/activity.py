"""The activity log: one append-only row per critical or security-relevant operation.

Services and views call ``record`` for each operation the issue lists (``Operation``), for
what succeeded and for what was refused (a role too low, a rule broken) or failed. A
refusal is usually raised inside a transaction that rolls back, so record it after the
exception left that transaction (``refusals_recorded`` does it), or the refusal would
vanish with the rest.

Who: ``user=``, or the request's user, their name kept as a snapshot; a machine's own call
(registration, say) has no user and names the machine in ``username``. From where: the
client address as ``portal.throttle.client_address`` sees it (``HAVEN_TRUSTED_PROXIES``).
A service need not pass the request along: ``RequestMiddleware`` keeps the request being
served in a context variable (as django-auditlog does), and ``record`` reads the address
(and, when no ``user`` is given, the user or the calling machine) from it. Work done
outside a request (the scheduler, a worker) has no address.
On what: the subscription, the vault (id and name, kept after the vault is gone) and one
resource (a machine, a policy, a job, a credentials file, a membership), as kind, id, name.

Refusals are counted, not repeated: the same actor from the same address refused the same
operation on the same target for the same reason within ``COALESCE_WINDOW`` (10 minutes of
the clock) is one row whose ``repeat_count`` and ``last_at`` go up ("refused 312 times, last
at 16:40"); the detail shown is the first try's. The first refusal of a window is a row at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connections, models, router
from django.utils import timezone as dj_timezone

from portal import access
from portal.models import Role, Subscription
from portal.throttle import client_address
from vaults.models import ActivityEntry, Vault

Operation = ActivityEntry.Operation
Outcome = ActivityEntry.Outcome

RESOURCE_NAME_MAX = 255
# A refusal repeated within this window of the clock (same actor, operation, target and
# reason) is counted on the window's first row instead of adding rows: a Reader or a stolen
# token looping on a refused POST cannot flood the log.
COALESCE_WINDOW = timedelta(minutes=10)

_current_request: ContextVar = ContextVar("haven_activity_request", default=None)


class RequestMiddleware:
    """Keep the request being served where ``record`` finds it (settings.MIDDLEWARE, after
    authentication)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _current_request.set(request)
        try:
            return self.get_response(request)
        finally:
            _current_request.reset(token)


@dataclass(frozen=True)
class Resource:
    """What an entry is about, when it is not simply a model instance."""

    kind: str
    id: str = ""
    name: str = ""


def resource_of(obj: Any) -> Resource:
    """A model instance (machine, policy, job, credential, membership) as a Resource."""
    if isinstance(obj, Resource):
        return obj
    if isinstance(obj, models.Model):
        name = getattr(obj, "name", None)
        return Resource(
            kind=str(obj._meta.verbose_name),
            id=str(obj.pk),
            name=str(name if name is not None else obj),
        )
    raise TypeError(f"not a resource: {obj!r}")


def record(
    *,
    operation: str,
    request=None,
    user=None,
    subscription: Subscription | None = None,
    vault=None,
    resource: Any = None,
    outcome: str = Outcome.SUCCEEDED,
    detail: dict | None = None,
    reason: str = "",
    actor: str = "",
) -> ActivityEntry:
    """Store one entry and return it.

    ``request`` (by default the one being served) gives the user when ``user`` is not
    given, and the client address. ``vault`` gives the subscription when ``subscription``
    is not given. ``actor`` names who acted when no person did (``"machine web-01"``; by
    default the machine whose token authenticated the request). ``detail`` is kept as
    JSON: a policy's diff, the redundancy before and after, a job's id.
    """
    if operation not in Operation.values:
        raise ValueError(f"unknown activity operation {operation!r}")
    if outcome not in Outcome.values:
        raise ValueError(f"unknown activity outcome {outcome!r}")
    if request is None:
        request = _current_request.get()
    if user is None and request is not None:
        candidate = getattr(request, "user", None)
        if candidate is not None and candidate.is_authenticated:
            user = candidate
    if user is None and not actor and request is not None:
        machine = getattr(request, "machine", None)
        if machine is not None:
            actor = f"machine {machine.name}"
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    subscription_id = subscription.pk if subscription is not None else None
    if subscription_id is None and vault is not None:
        subscription_id = vault.subscription_id
    res = resource_of(resource) if resource is not None else Resource(kind="")
    entry = ActivityEntry(
        user=user,
        username=(user.get_username() if user is not None else actor)[:150],
        operation=operation,
        subscription_id=subscription_id,
        vault_id=vault.pk if vault is not None else None,
        vault_name=vault.name if vault is not None else "",
        resource_kind=res.kind[:40],
        resource_id=res.id[:64],
        resource_name=res.name[:RESOURCE_NAME_MAX],
        outcome=outcome,
        reason=reason,
        address=client_address(request) if request is not None else "",
        detail=_jsonable(detail or {}),
    )
    if outcome != Outcome.REFUSED:
        entry.save()
        return entry
    return _refusal_counted(entry)


def coalesce_key(entry: ActivityEntry) -> str:
    """Who (the user, or the machine's name) from where (the client address), what
    (operation, subscription, vault, resource), why (the reason) and the window of the clock
    it falls in, as a digest. The address is part of it so that the address an entry shows
    is every try's: tries from another address are an entry of their own (a guesser from a
    thousand addresses is a thousand entries, each counted). Not the detail: it may hold
    what the person typed (a reason for deleting, say), and a loop that changed it on each
    try would flood the log again; the entry keeps the first try's detail."""
    window = int(entry.at.timestamp() // COALESCE_WINDOW.total_seconds())
    parts = [
        str(entry.user_id) if entry.user_id is not None else f"name:{entry.username}",
        entry.address,
        entry.operation,
        entry.outcome,
        str(entry.subscription_id or ""),
        str(entry.vault_id or ""),
        entry.resource_kind,
        entry.resource_id,
        entry.reason,
        window,
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _refusal_counted(entry: ActivityEntry) -> ActivityEntry:
    """Insert the refusal, or, when the same one is already in its window, count it there:
    one INSERT … ON CONFLICT (coalesce_key) DO UPDATE … RETURNING (PostgreSQL and SQLite),
    on the key's unique index, so concurrent repeats neither scan the log nor make two
    rows. The first of a window is always a row of its own, at once. Concurrent repeats
    may arrive out of their order: the last time only moves forward."""
    entry.last_at = entry.at
    entry.coalesce_key = coalesce_key(entry)
    connection = connections[router.db_for_write(ActivityEntry)]
    fields = [f for f in ActivityEntry._meta.concrete_fields if not f.primary_key]
    table = connection.ops.quote_name(ActivityEntry._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    values = [f.get_db_prep_save(getattr(entry, f.attname), connection) for f in fields]
    count = connection.ops.quote_name("repeat_count")
    last = connection.ops.quote_name("last_at")
    sql = (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))}) "
        f"ON CONFLICT ({connection.ops.quote_name('coalesce_key')}) DO UPDATE SET "
        f"{count} = {table}.{count} + 1, {last} = CASE WHEN EXCLUDED.{last} > {table}.{last} "
        f"THEN EXCLUDED.{last} ELSE {table}.{last} END "
        f"RETURNING {connection.ops.quote_name('id')}, {count}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        entry.pk, entry.repeat_count = cursor.fetchone()
    entry._state.adding = False
    entry._state.db = connection.alias
    return entry


def _jsonable(value):
    """Make ``detail`` storable: UUIDs and other odd values become their text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def refusal_reason(exc: BaseException) -> str:
    """The words a person saw for a refusal."""
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


@contextlib.contextmanager
def refusals_recorded(
    *,
    operation: str,
    refused: tuple[type[BaseException], ...] = (PermissionDenied, ValidationError),
    failed: tuple[type[BaseException], ...] = (),
    **fields,
) -> Iterator[None]:
    """Record a refused entry when the block raises one of ``refused`` (a failed one for
    ``failed``), then re-raise.

    Use it outside the transaction that the refusal rolls back. ``fields`` are ``record``'s
    (``request``, ``user``, ``vault``, ``resource``, ``detail``...).
    """
    try:
        yield
    except failed as exc:
        record(operation=operation, outcome=Outcome.FAILED, reason=refusal_reason(exc), **fields)
        raise
    except refused as exc:
        record(operation=operation, outcome=Outcome.REFUSED, reason=refusal_reason(exc), **fields)
        raise


def signin_pause_record(*, username: str, failure) -> None:
    """A run of failed sign-ins (passwords, codes, access tokens) started a pause of
    ``failure.pause`` seconds for ``username`` and the request's address: one refused
    *Sign-in paused after failures* entry in each subscription of the account of that name,
    so its Owners see it in the subscription's activity log; one without a subscription when
    no such account exists or it belongs to none. The portal's administrators see them all
    on *Sign-in activity* (``portal.views.accounts.signin_activity``). Nothing the person signing in sees
    changes, so the pause still does not tell whether the account exists."""
    from portal.models import Membership

    if not failure.pause:
        return
    tried = username.strip()[:150]
    # One query whether or not the account exists (the same work either way, as far as
    # the account's number of subscriptions allows).
    where: list[tuple[Subscription | None, str]] = [
        (m.subscription, str(m.user_id))
        for m in Membership.objects.filter(user__username__iexact=tried).select_related(
            "subscription"
        )
    ] or [(None, "")]
    seconds = failure.pause
    paused = (
        f"{seconds} second{'s' if seconds != 1 else ''}"
        if seconds < 90
        else f"{-(-seconds // 60)} minutes"
    )
    for subscription, account_id in where:
        record(
            operation=Operation.SIGNIN_LOCKOUT,
            subscription=subscription,
            outcome=Outcome.REFUSED,
            actor="anonymous",
            # A name with no account is not named in the resource, only in the detail,
            # which is not part of what makes a refusal the same: a guesser cycling made-up
            # names adds to one counted entry per pause length and 10 minutes, not a row
            # per name (those entries are on the administrators' Sign-in activity only).
            resource=Resource(
                kind="user account", id=account_id, name=tried if subscription else ""
            ),
            reason=f"Sign-in paused for {paused} after {failure.failures} failures in a row.",
            detail={"user_name_tried": tried},
        )


def require_role(request, *, vault, role: str, operation: str, resource: Any = None) -> None:
    """Check that the request's user has ``role`` on the vault's subscription; if the role
    is too low, record the refused attempt and raise PermissionDenied (403).

    The caller has loaded the vault for the user (an outsider already got 404 there, and is
    not logged in a vault they cannot see).
    """
    with refusals_recorded(
        operation=operation,
        refused=(PermissionDenied,),
        request=request,
        vault=vault,
        resource=resource,
    ):
        access.check_role(request.user, vault.subscription_id, role)


# --- reading it back: the page's Details column and the CSV export ---------------------------
# The Details column's words: a detail key's label, and for some keys the labels of their
# values (codes a person never typed: "grs", "backup_operator"). Another app adds its own in
# its AppConfig.ready (``register_detail_words``: the jobs app, a policy's settings).
DETAIL_LABELS: dict[str, str] = {
    "job": "Job",
    "location": "Region",
    "resource_group": "Resource group",
    "redundancy": "Storage replication type",
    "role": "Role",
    "single_use": "Single use",
    "expires_at": "Expires",
    "for": "For",
    "refusal": "Refused because",
    "via": "Through",
    "target": "Onto",
    "credentials": "Vault credentials",
    "credentials_downloaded_by": "Credentials downloaded by",
    "hostname": "Host name",
    "replaced": "Replaces",
    "rollback": "Registration undone",
    "recovery_point": "Recovery point",
    "recovery_point_time": "Recovery point time",
    "retain_until": "Retain until",
    "started_on_machine": "Started on the machine",
    "runs_on": "Runs on",
    "new_key": "New key",
    "old_keys": "Old keys",
    "old_keys_removed_after": "Old keys removed after",
    "user": "User",
    "user_name_tried": "User name tried",
    "required": "Required",
    "version": "Policy version",
    "host": "Host",
    "signed": "Signed",
}
VALUE_LABELS: dict[str, dict[str, str]] = {}
# The kind of value an operation's "from" and "to" are (labelled as that key's values).
CHANGE_KINDS: dict[str, str] = {}


def register_detail_words(
    *,
    labels: dict[str, str] | None = None,
    values: dict[str, dict[str, str]] | None = None,
    changes: dict[str, str] | None = None,
) -> None:
    """Add words for the Details column: key labels, value labels by key, and the key whose
    values an operation's from/to are."""
    DETAIL_LABELS.update(labels or {})
    for key, words in (values or {}).items():
        VALUE_LABELS.setdefault(key, {}).update(words)
    CHANGE_KINDS.update(changes or {})


register_detail_words(
    values={
        "redundancy": {str(v): str(label) for v, label in Vault.Redundancy.choices},
        "immutability": {str(v): str(label) for v, label in Vault.Immutability.choices},
        "role": {str(v): str(label) for v, label in Role.choices},
    },
    changes={
        Operation.REDUNDANCY_CHANGE: "redundancy",
        Operation.IMMUTABILITY_CHANGE: "immutability",
        Operation.ROLE_CHANGE: "role",
    },
)


_ISO_MOMENT = re.compile(
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$"
)


def _moment(value: str) -> str | None:
    """An ISO 8601 time as the log's Time column shows it (the portal's zone), else None."""
    if not _ISO_MOMENT.match(value):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dj_timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    return dj_timezone.localtime(moment).strftime("%Y-%m-%d %H:%M")


def _shown(value, key: str = "") -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_shown(v, key) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{_label(k)} {_shown(v, k)}" for k, v in value.items())
    words = VALUE_LABELS.get(key)
    if words and str(value) in words:
        return words[str(value)]
    if isinstance(value, str):
        return _moment(value) or value
    return str(value)


def _label(key: str) -> str:
    return DETAIL_LABELS.get(key) or key.replace("_", " ").replace(".", " › ").capitalize()


def detail_lines(detail: dict, operation: str = "") -> list[str]:
    """``detail`` in words, one line per fact: "Geo-redundant → Locally-redundant", "Daily
    points kept (days): 7 → 30", "Onto: web-02", "Expires: 2026-12-07 09:30"."""
    lines = []
    if "from" in detail and "to" in detail:
        kind = CHANGE_KINDS.get(operation, "")
        lines.append(f"{_shown(detail['from'], kind)} → {_shown(detail['to'], kind)}")
    for key, value in detail.items():
        if key in ("from", "to"):
            continue
        if key == "changes" and isinstance(value, dict):
            for name, change in value.items():
                if isinstance(change, dict):
                    lines.append(
                        f"{_label(name)}: {_shown(change.get('from'), name)} → "
                        f"{_shown(change.get('to'), name)}"
                    )
        else:
            lines.append(f"{_label(key)}: {_shown(value, key)}")
    return lines


CSV_HEADER = [
    "Time (UTC)",
    "Operation",
    "Operation code",
    "Outcome",
    "Initiated by",
    "Client address",
    "Vault",
    "Vault ID",
    "Resource type",
    "Resource ID",
    "Resource",
    "Reason",
    "Details",
    "Times",
    "Last time (UTC)",
]
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's "CSV
# injection"): such a cell is written with a leading apostrophe, which shows it as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_row(entry: ActivityEntry) -> list[str]:
    cells = [
        entry.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        entry.get_operation_display(),
        entry.operation,
        entry.get_outcome_display(),
        entry.username,
        entry.address,
        entry.vault_name,
        str(entry.vault_id) if entry.vault_id else "",
        entry.resource_kind,
        entry.resource_id,
        entry.resource_name,
        entry.reason,
        json.dumps(entry.detail, ensure_ascii=False, sort_keys=True) if entry.detail else "",
        str(entry.repeat_count),
        entry.last_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        if entry.repeat_count > 1 and entry.last_at
        else "",
    ]
    return [csv_safe(cell) for cell in cells]
