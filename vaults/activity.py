"""The activity log: one append-only row per critical or security-relevant operation.

Services and views call ``record`` for each operation the issue lists (``Operation``), for
what succeeded and for what was refused (a role too low, a rule broken) or failed. A
refusal is usually raised inside a transaction that rolls back, so record it after the
exception left that transaction (``refusals_recorded`` does it), or the refusal would
vanish with the rest.

Who: the request's user (or ``user=``), their name kept as a snapshot; a machine's own call
(registration, say) has no user and names the machine in ``username``. From where: the
client address as ``portal.throttle.client_address`` sees it (``HAVEN_TRUSTED_PROXIES``).
On what: the subscription, the vault (id and name, kept after the vault is gone) and one
resource (a machine, a policy, a job, a credentials file, a membership), as kind, id, name.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models

from portal import access
from portal.models import Subscription
from portal.throttle import client_address
from vaults.models import ActivityEntry

Operation = ActivityEntry.Operation
Outcome = ActivityEntry.Outcome

RESOURCE_NAME_MAX = 255


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

    ``request`` gives the user (when ``user`` is not given) and the client address.
    ``vault`` gives the subscription when ``subscription`` is not given. ``actor`` names
    who acted when no person did (``"machine web-01"``). ``detail`` must be JSON: a
    policy's diff, the redundancy before and after, a job's id.
    """
    if operation not in Operation.values:
        raise ValueError(f"unknown activity operation {operation!r}")
    if outcome not in Outcome.values:
        raise ValueError(f"unknown activity outcome {outcome!r}")
    if user is None and request is not None:
        candidate = getattr(request, "user", None)
        if candidate is not None and candidate.is_authenticated:
            user = candidate
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    subscription_id = subscription.pk if subscription is not None else None
    if subscription_id is None and vault is not None:
        subscription_id = vault.subscription_id
    res = resource_of(resource) if resource is not None else Resource(kind="")
    return ActivityEntry.objects.create(
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
    **fields,
) -> Iterator[None]:
    """Record a refused entry when the block raises one of ``refused``, then re-raise.

    Use it outside the transaction that the refusal rolls back. ``fields`` are ``record``'s
    (``request``, ``vault``, ``resource``, ``detail``...).
    """
    try:
        yield
    except refused as exc:
        record(operation=operation, outcome=Outcome.REFUSED, reason=refusal_reason(exc), **fields)
        raise


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
