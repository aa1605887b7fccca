"""Reads for machines (the permission filter included)."""

from __future__ import annotations

from django.db.models import Max

from agents.models import Machine
from portal import access


def machines_for_user(user, *, vault=None, include_unregistered: bool = False):
    """Machines the user may see, optionally in one vault, with their vault loaded."""
    qs = access.for_user(user, Machine).select_related(
        "vault", "vault__subscription", "vault__resource_group"
    )
    if vault is not None:
        qs = qs.filter(vault=vault)
    if not include_unregistered:
        qs = qs.filter(unregistered_at__isnull=True)
    if hasattr(Machine, "recovery_points"):  # the jobs app's recovery points
        qs = qs.annotate(last_backup_at=Max("recovery_points__created_at"))
    return qs.order_by("vault__name", "name")


def last_backup_at(machine: Machine):
    """The time of the machine's latest recovery point; None until the jobs app records
    them (it may set ``Machine.last_backup_at`` or give recovery points a ``created_at``)."""
    value = getattr(machine, "last_backup_at", None)
    if value is not None:
        return value
    points = getattr(machine, "recovery_points", None)
    if points is None:
        return None
    try:
        latest = points.order_by("-created_at").values_list("created_at", flat=True).first()
    except Exception:  # the jobs app's model may name the field differently
        return None
    return latest
