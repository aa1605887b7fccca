"""Loading objects together with their permission check.

Every view, consumer and API endpoint loads what it works on through ``get_for_user`` (or
``subscription_for_user``), so none can forget the check. An outsider gets 404 (we do not
confirm that someone else's vault exists); a member whose role is too low gets 403.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import Http404

from portal.models import Membership, Role, Subscription


def role_in(user, subscription_id) -> str | None:
    """The user's role on a subscription, or None. Superusers are Owners everywhere."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return Role.OWNER
    return (
        Membership.objects.filter(user=user, subscription_id=subscription_id)
        .values_list("role", flat=True)
        .first()
    )


def has_role(user, subscription_id, role: str) -> bool:
    current = role_in(user, subscription_id)
    return current is not None and Role.rank(current) >= Role.rank(role)


def check_role(user, subscription_id, role: str) -> str:
    """Raise Http404 for outsiders and PermissionDenied for too low a role; return the role."""
    current = role_in(user, subscription_id)
    if current is None:
        raise Http404("No such resource")
    if Role.rank(current) < Role.rank(role):
        raise PermissionDenied(
            f"This needs the {Role(role).label} role or higher; you are {Role(current).label}."
        )
    return current


def visible_subscription_ids(user):
    """A queryset of subscription ids the user may see (any role)."""
    if user.is_superuser:
        return Subscription.objects.values("id")
    return Membership.objects.filter(user=user).values("subscription_id")


def for_user(user, queryset_or_model, *, subscription_path: str | None = None):
    """Restrict a queryset to what the user may see."""
    qs = _queryset(queryset_or_model)
    path = subscription_path or getattr(qs.model, "subscription_path", None)
    if path is None:
        raise TypeError(f"{qs.model.__name__} has no subscription_path")
    if user.is_superuser:
        return qs
    lookup = "id__in" if qs.model is Subscription else f"{path}__in"
    return qs.filter(**{lookup: visible_subscription_ids(user)})


def subscription_for_user(user, subscription_id, *, role: str = Role.READER) -> Subscription:
    try:
        subscription = Subscription.objects.get(pk=subscription_id)
    except (Subscription.DoesNotExist, ValueError, TypeError):
        raise Http404("No such subscription") from None
    check_role(user, subscription.pk, role)
    return subscription


def get_for_user(user, queryset_or_model, *, role: str = Role.READER, **lookup):
    """Load one object and check the user's role on the subscription it belongs to.

    The model names the path to its subscription in ``subscription_path`` (for example
    ``"resource_group__subscription"`` on a vault).
    """
    qs = _queryset(queryset_or_model)
    path = getattr(qs.model, "subscription_path", None)
    if path is None:
        raise TypeError(f"{qs.model.__name__} has no subscription_path")
    try:
        obj = qs.get(**lookup)
    except (qs.model.DoesNotExist, ValueError, TypeError):
        raise Http404("No such resource") from None
    target = obj
    *hops, last = path.split("__")
    for hop in hops:
        target = getattr(target, hop)
    check_role(user, getattr(target, f"{last}_id"), role)
    return obj


def _queryset(queryset_or_model) -> models.QuerySet:
    if isinstance(queryset_or_model, models.QuerySet):
        return queryset_or_model
    return queryset_or_model._default_manager.all()
