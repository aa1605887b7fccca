"""Loading objects together with their permission check.

Every view, consumer and API endpoint loads what it works on through ``get_for_user`` (or
``subscription_for_user``), so none can forget the check. An outsider gets 404 (we do not
confirm that someone else's vault exists); a member whose role is too low gets 403. An id
that cannot be one (``?vault=junk`` for a UUID key) is no such object either: 404.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.http import Http404

from portal.models import Membership, Role, Subscription

# What a lookup raises for a value its field cannot hold: ValueError/TypeError for an
# integer key, ValidationError for a UUID key.
_BAD_ID = (ValueError, TypeError, ValidationError)


class TwoFactorRequired(PermissionDenied):
    """The subscription requires two-factor sign-in and this request's user has not enrolled
    (a personal access token's request: a session is sent to enrolment before it gets here)."""


def two_factor_barred(user) -> dict[str, str]:
    """The subscriptions (id as text: name) this request may not reach until its user enrols
    in two-factor sign-in. Token authentication (``portal.api.auth``) sets them on the user it
    loads; a session never carries any (``TwoFactorMiddleware`` refuses it everything)."""
    return getattr(user, "two_factor_barred", None) or {}


def _refuse_barred(user, subscription_id) -> None:
    name = two_factor_barred(user).get(str(subscription_id))
    if name is not None:
        raise TwoFactorRequired(
            f"{name} requires two-factor sign-in: enrol at /account/two-factor/, then this "
            "token works again."
        )


def role_in(user, subscription_id) -> str | None:
    """The user's role on a subscription, or None. Superusers are Owners everywhere. A
    deactivated account has no role anywhere: an authorisation a person gave (a cross-machine
    read, vault credentials they downloaded) ends when their account is deactivated, as it
    does when their role is taken away."""
    if not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser:
        return Role.OWNER
    return (
        Membership.objects.filter(user=user, subscription_id=subscription_id)
        .values_list("role", flat=True)
        .first()
    )


def has_role(user, subscription_id, role: str) -> bool:
    if str(subscription_id) in two_factor_barred(user):
        return False
    current = role_in(user, subscription_id)
    return current is not None and Role.rank(current) >= Role.rank(role)


def check_role(user, subscription_id, role: str) -> str:
    """Raise Http404 for outsiders and PermissionDenied for too low a role (or, for a token,
    a subscription that requires two-factor sign-in its user has not set up); return the role."""
    current = role_in(user, subscription_id)
    if current is None:
        raise Http404("No such resource")
    _refuse_barred(user, subscription_id)
    if Role.rank(current) < Role.rank(role):
        raise PermissionDenied(
            f"This needs the {Role(role).label} role or higher; you are {Role(current).label}."
        )
    return current


def visible_subscription_ids(user):
    """A queryset of subscription ids the user may see (any role)."""
    barred = list(two_factor_barred(user))
    if user.is_superuser:
        subscriptions = Subscription.objects.all()
        return (subscriptions.exclude(id__in=barred) if barred else subscriptions).values("id")
    memberships = Membership.objects.filter(user=user)
    if barred:
        memberships = memberships.exclude(subscription_id__in=barred)
    return memberships.values("subscription_id")


def for_user(user, queryset_or_model, *, subscription_path: str | None = None):
    """Restrict a queryset to what the user may see."""
    qs = _queryset(queryset_or_model)
    if qs.model is Subscription:
        lookup = "id__in"
    else:
        path = subscription_path or getattr(qs.model, "subscription_path", None)
        if path is None:
            raise TypeError(f"{qs.model.__name__} has no subscription_path")
        lookup = f"{path}__in"
    if not user.is_authenticated:
        return qs.none()
    if user.is_superuser and not two_factor_barred(user):
        return qs
    return qs.filter(**{lookup: visible_subscription_ids(user)})


def subscription_for_user(user, subscription_id, *, role: str = Role.READER) -> Subscription:
    try:
        subscription = Subscription.objects.get(pk=subscription_id)
    except (Subscription.DoesNotExist, *_BAD_ID):
        raise Http404("No such subscription") from None
    check_role(user, subscription.pk, role)
    return subscription


def get_for_user(user, queryset_or_model, *, role: str = Role.READER, **lookup):
    """Load one object and check the user's role on the subscription it belongs to.

    The model names the path to its subscription in ``subscription_path`` (for example
    ``"resource_group__subscription"`` on a vault).
    """
    return get_with_role(user, queryset_or_model, role=role, **lookup)[0]


def get_with_role(user, queryset_or_model, *, role: str = Role.READER, **lookup):
    """``get_for_user``, also returning the user's role there, for pages whose buttons
    depend on it (so they need not look it up again)."""
    qs = _queryset(queryset_or_model)
    path = getattr(qs.model, "subscription_path", None)
    if path is None:
        raise TypeError(f"{qs.model.__name__} has no subscription_path")
    try:
        obj = qs.get(**lookup)
    except (qs.model.DoesNotExist, *_BAD_ID):
        raise Http404("No such resource") from None
    target = obj
    *hops, last = path.split("__")
    for hop in hops:
        target = getattr(target, hop)
    return obj, check_role(user, getattr(target, f"{last}_id"), role)


def _queryset(queryset_or_model) -> models.QuerySet:
    if isinstance(queryset_or_model, models.QuerySet):
        return queryset_or_model
    return queryset_or_model._default_manager.all()


# --- Who may manage which users ----------------------------------------------------------


def owned_subscriptions(user):
    """Subscriptions where the user is Owner (all of them for a superuser)."""
    if not user.is_authenticated:
        return Subscription.objects.none()
    if user.is_superuser:
        return Subscription.objects.all()
    return Subscription.objects.filter(memberships__user=user, memberships__role=Role.OWNER)


def subscriptions_with_role(user, role: str):
    """Subscriptions where the user holds ``role`` or a more powerful one."""
    if user.is_superuser:
        return Subscription.objects.all()
    allowed = [r for r in Role.values if Role.rank(r) >= Role.rank(role)]
    return Subscription.objects.filter(memberships__user=user, memberships__role__in=allowed)


def can_manage_users(user) -> bool:
    """Superusers and Owners of any subscription manage users."""
    return user.is_authenticated and (user.is_superuser or owned_subscriptions(user).exists())


def can_create_subscriptions(user) -> bool:
    return can_manage_users(user)


def owners_to_ask(user, *, role: str) -> list[tuple[Subscription, str, list[str]]]:
    """For each subscription where the user is below ``role``: the subscription, the user's
    role there, and the user names of its Owners, whom the user can ask for more.

    Only subscriptions the user is already a member of (whose Owners they can already see
    on its overview): an outsider learns no one's name."""
    if not user.is_authenticated or user.is_superuser:
        return []
    allowed = [r for r in Role.values if Role.rank(r) >= Role.rank(role)]
    below = list(
        Membership.objects.filter(user=user)
        .exclude(role__in=allowed)
        .select_related("subscription")
        .order_by("subscription__name")
    )
    owners: dict = {}
    for subscription_id, username in (
        Membership.objects.filter(
            subscription_id__in=[m.subscription_id for m in below], role=Role.OWNER
        )
        .order_by("user__username")
        .values_list("subscription_id", "user__username")
    ):
        owners.setdefault(subscription_id, []).append(username)
    return [(m.subscription, m.role, owners.get(m.subscription_id, [])) for m in below]


def require_superuser(user) -> None:
    """The portal's own administration: anyone else gets the 404 an outsider gets, so the
    page's existence tells them nothing."""
    if not (user.is_authenticated and user.is_superuser):
        raise Http404


def require_user_manager(user) -> None:
    if not can_manage_users(user):
        raise PermissionDenied("Managing users needs the Owner role on a subscription.")


def managed_users(manager):
    """The users a manager may see on the Users page.

    A superuser sees everyone; an Owner sees the members of the subscriptions they own."""
    from portal.models import User

    if manager.is_superuser:
        return User.objects.all()
    return User.objects.filter(
        memberships__subscription__in=owned_subscriptions(manager).values("id")
    ).distinct()


def user_for_manager(manager, user_id):
    """Load a user that ``manager`` may deactivate or reset.

    Users the manager cannot see: 404. Visible but out of reach (an administrator, the
    manager themself, or someone who also belongs to subscriptions the manager does not
    own): 403 — an Owner of one subscription must not lock out the people of another."""
    from portal.models import User

    require_user_manager(manager)
    try:
        target = managed_users(manager).get(pk=user_id)
    except (User.DoesNotExist, *_BAD_ID):
        raise Http404("No such user") from None
    if target.pk == manager.pk:
        raise PermissionDenied("You cannot change your own account here; use Change password.")
    if manager.is_superuser:
        return target
    if target.is_superuser:
        raise PermissionDenied("Only an administrator can change an administrator's account.")
    outside = Membership.objects.filter(user=target).exclude(
        subscription__in=owned_subscriptions(manager).values("id")
    )
    if outside.exists():
        raise PermissionDenied(
            f"{target.username} also has access to subscriptions you do not own; "
            "ask an administrator."
        )
    return target
