"""Writes for the portal's own models: subscriptions, resource groups, memberships,
notifications. Views, consumers and tasks call these; they never save these models."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from portal import realtime
from portal.models import Membership, Notification, ResourceGroup, Role, Subscription

RESOURCE_GROUP_NAME = re.compile(r"^[-\w._()]{1,90}$")
SUBSCRIPTION_NAME = re.compile(r"^[^\W_][\w .\-()]*$")

RESOURCE_GROUP_NAME_RULE = (
    "1 to 90 characters: letters, digits, underscores, hyphens, periods and parentheses; "
    "not ending with a period."
)
SUBSCRIPTION_NAME_RULE = (
    "1 to 64 characters: letters, digits, spaces, underscores, hyphens, periods and "
    "parentheses, starting with a letter or digit."
)


class Refused(Exception):
    """An action the rules do not allow, with a message a person can act on."""


# Reverse relations that belong to a subscription and go with it; anything else in a
# subscription or a resource group (a vault, say) blocks its deletion.
_OWNED_BY_SUBSCRIPTION = frozenset({"memberships"})


def resource_group_name_problems(name: str) -> list[str]:
    """Every rule the name breaks (Azure's rules for resource group names)."""
    problems = []
    if not 1 <= len(name) <= 90:
        problems.append("The name must be 1 to 90 characters long.")
    if name and not RESOURCE_GROUP_NAME.match(name):
        problems.append(
            "The name can contain only letters, digits, underscores, hyphens, periods and parentheses."
        )
    if name.endswith("."):
        problems.append("The name cannot end with a period.")
    return problems


def subscription_name_problems(name: str) -> list[str]:
    problems = []
    if not 1 <= len(name) <= 64:
        problems.append("The name must be 1 to 64 characters long.")
    if name and not SUBSCRIPTION_NAME.match(name):
        if not name[0].isalnum():
            problems.append("The name must start with a letter or a digit.")
        if not all(ch.isalnum() or ch in " _.-()" for ch in name):
            problems.append(
                "The name can contain only letters, digits, spaces, underscores, hyphens, "
                "periods and parentheses."
            )
    return problems


def _check_resource_group_name(
    *, subscription: Subscription, name: str, exclude_id: int | None = None
) -> None:
    problems = resource_group_name_problems(name)
    if problems:
        raise ValidationError({"name": problems})
    clash = ResourceGroup.objects.filter(subscription=subscription, name__iexact=name)
    if exclude_id is not None:
        clash = clash.exclude(pk=exclude_id)
    if clash.exists():
        raise ValidationError(
            {"name": [f"A resource group named {name!r} already exists in {subscription}."]}
        )


def _check_subscription_name(*, name: str, exclude_id=None) -> None:
    problems = subscription_name_problems(name)
    if problems:
        raise ValidationError({"name": problems})
    clash = Subscription.objects.filter(name__iexact=name)
    if exclude_id is not None:
        clash = clash.exclude(pk=exclude_id)
    if clash.exists():
        raise ValidationError({"name": [f"A subscription named {name!r} already exists."]})


def resource_group_name_check(*, subscription: Subscription | None, name: str) -> list[str]:
    """The problems with a proposed name, for live validation (nothing is written)."""
    try:
        if subscription is None:
            problems = resource_group_name_problems(name.strip())
            if problems:
                raise ValidationError({"name": problems})
        else:
            _check_resource_group_name(subscription=subscription, name=name.strip())
    except ValidationError as exc:
        return exc.message_dict["name"]
    return []


def subscription_name_check(*, name: str, exclude_id=None) -> list[str]:
    try:
        _check_subscription_name(name=name.strip(), exclude_id=exclude_id)
    except ValidationError as exc:
        return exc.message_dict["name"]
    return []


@transaction.atomic
def resource_group_create(
    *, subscription: Subscription, name: str, location: str, by=None
) -> ResourceGroup:
    name = name.strip()
    _check_resource_group_name(subscription=subscription, name=name)
    if not location:
        raise ValidationError({"location": ["Choose a region."]})
    try:
        with transaction.atomic():
            group = ResourceGroup.objects.create(
                subscription=subscription, name=name, location=location
            )
    except IntegrityError:
        raise ValidationError(
            {"name": [f"A resource group named {name!r} already exists."]}
        ) from None
    if by is not None:
        notification_publish(
            user=by,
            title="Resource group created",
            body=f"Resource group '{group.name}' was created in {subscription}.",
            level=Notification.Level.SUCCESS,
            link_url=reverse("portal:resource-group", args=[group.pk]),
            link_label="Go to resource group",
        )
    return group


@transaction.atomic
def resource_group_rename(*, group: ResourceGroup, name: str) -> ResourceGroup:
    name = name.strip()
    _check_resource_group_name(subscription=group.subscription, name=name, exclude_id=group.pk)
    group.name = name
    group.save(update_fields=["name"])
    return group


@dataclass(frozen=True)
class Contents:
    """Rows of one kind found inside a subscription or resource group."""

    noun: str
    count: int
    sample: list

    def __str__(self) -> str:
        names = ", ".join(str(o) for o in self.sample)
        more = ", …" if self.count > len(self.sample) else ""
        return f"{self.count} {self.noun} ({names}{more})"


def contents_of(obj, *, ignore: frozenset[str] = frozenset()) -> list[Contents]:
    """What lives in ``obj``, found through every reverse relation, so a vault app that
    points at resource groups is counted without this module knowing it."""
    found = []
    for relation in obj._meta.related_objects:
        if relation.many_to_many or relation.name in ignore:
            continue
        related = relation.related_model._default_manager.filter(**{relation.field.name: obj})
        count = related.count()
        if not count:
            continue
        meta = relation.related_model._meta
        noun = str(meta.verbose_name if count == 1 else meta.verbose_name_plural)
        found.append(Contents(noun=noun, count=count, sample=list(related[:5])))
    return found


def _describe(contents: list[Contents]) -> str:
    return "; ".join(str(c) for c in contents)


@transaction.atomic
def resource_group_delete(*, group: ResourceGroup) -> None:
    group = ResourceGroup.objects.select_for_update().get(pk=group.pk)
    blockers = contents_of(group)
    if blockers:
        raise Refused(
            f"Resource group '{group.name}' is not empty: it contains {_describe(blockers)}. "
            "Delete or move those first."
        )
    group.delete()


@transaction.atomic
def subscription_create(*, name: str, owner) -> Subscription:
    name = name.strip()
    _check_subscription_name(name=name)
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(name=name, created_by=owner)
    except IntegrityError:
        raise ValidationError(
            {"name": [f"A subscription named {name!r} already exists."]}
        ) from None
    Membership.objects.create(user=owner, subscription=subscription, role=Role.OWNER)
    notification_publish(
        user=owner,
        title="Subscription created",
        body=f"Subscription '{subscription.name}' was created. You are its Owner.",
        level=Notification.Level.SUCCESS,
        link_url=reverse("portal:subscription", args=[subscription.pk]),
        link_label="Go to subscription",
    )
    return subscription


@transaction.atomic
def subscription_rename(*, subscription: Subscription, name: str) -> Subscription:
    name = name.strip()
    _check_subscription_name(name=name, exclude_id=subscription.pk)
    subscription.name = name
    subscription.save(update_fields=["name"])
    return subscription


@transaction.atomic
def subscription_delete(*, subscription: Subscription) -> None:
    subscription = Subscription.objects.select_for_update().get(pk=subscription.pk)
    blockers = contents_of(subscription, ignore=_OWNED_BY_SUBSCRIPTION)
    if blockers:
        raise Refused(
            f"Subscription '{subscription.name}' is not empty: it contains "
            f"{_describe(blockers)}. Delete those first."
        )
    subscription.delete()


# --- Memberships (role assignments) -------------------------------------------------------


def _owner_count(subscription: Subscription) -> int:
    return Membership.objects.filter(
        subscription=subscription, role=Role.OWNER, user__is_active=True
    ).count()


@transaction.atomic
def membership_add(*, subscription: Subscription, username: str, role: str) -> Membership:
    from portal.models import User

    username = username.strip()
    if role not in Role.values:
        raise ValidationError({"role": ["Choose one of the roles."]})
    user = User.objects.filter(username__iexact=username, is_active=True).first()
    if user is None:
        raise ValidationError({"username": [f"There is no active user named {username!r}."]})
    if Membership.objects.filter(subscription=subscription, user=user).exists():
        raise ValidationError(
            {
                "username": [
                    f"{user.username} already has a role on {subscription}; change it below."
                ]
            }
        )
    membership = Membership.objects.create(subscription=subscription, user=user, role=role)
    notification_publish(
        user=user,
        title="You were given access",
        body=f"You are now {Role(role).label} of subscription '{subscription.name}'.",
        link_url=reverse("portal:subscription", args=[subscription.pk]),
        link_label="Go to subscription",
    )
    return membership


@transaction.atomic
def membership_set_role(*, membership: Membership, role: str) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": ["Choose one of the roles."]})
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if (
        membership.role == Role.OWNER
        and role != Role.OWNER
        and _owner_count(membership.subscription) <= 1
    ):
        raise Refused(
            f"{membership.user.username} is the last Owner of {membership.subscription}; "
            "make someone else Owner first."
        )
    membership.role = role
    membership.save(update_fields=["role"])
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership) -> None:
    membership = Membership.objects.select_for_update().get(pk=membership.pk)
    if membership.role == Role.OWNER and _owner_count(membership.subscription) <= 1:
        raise Refused(
            f"{membership.user.username} is the last Owner of {membership.subscription}; "
            "a subscription always keeps at least one Owner."
        )
    membership.delete()


# --- Users ---------------------------------------------------------------------------------


def _one_time_password() -> str:
    return secrets.token_urlsafe(12)


@transaction.atomic
def user_create(
    *,
    username: str,
    full_name: str = "",
    email: str = "",
    subscription: Subscription | None = None,
    role: str = Role.READER,
) -> tuple:
    """Create a user with a generated one-time password; return (user, password).

    The password is shown once to whoever created the account; the user must change it at
    the first sign-in."""
    from django.contrib.auth.validators import UnicodeUsernameValidator

    from portal.models import User

    username = username.strip()
    errors: dict[str, list[str]] = {}
    try:
        if not username:
            raise ValidationError("Enter a user name.")
        if len(username) > 150:
            raise ValidationError("The user name must be at most 150 characters long.")
        UnicodeUsernameValidator()(username)
    except ValidationError as exc:
        errors["username"] = [
            "A user name has 1 to 150 characters: letters, digits and @ . + - _ only."
            if exc.messages[0].startswith("Enter a valid")
            else exc.messages[0]
        ]
    if not errors and User.objects.filter(username__iexact=username).exists():
        errors["username"] = [f"A user named {username!r} already exists."]
    if email:
        from django.core.validators import validate_email

        try:
            validate_email(email)
        except ValidationError:
            errors["email"] = ["Enter a valid email address, or leave it empty."]
    if subscription is not None and role not in Role.values:
        errors["role"] = ["Choose one of the roles."]
    if errors:
        raise ValidationError(errors)
    first, _, last = full_name.strip().partition(" ")
    password = _one_time_password()
    user = User.objects.create_user(
        username=username,
        email=email,
        password=password,
        first_name=first[:150],
        last_name=last[:150],
        password_change_required=True,
    )
    if subscription is not None:
        Membership.objects.create(user=user, subscription=subscription, role=role)
    return user, password


@transaction.atomic
def user_set_active(*, user, active: bool):
    if not active:
        sole = [
            m.subscription.name
            for m in Membership.objects.filter(user=user, role=Role.OWNER).select_related(
                "subscription"
            )
            if _owner_count(m.subscription) <= 1
        ]
        if sole:
            raise Refused(
                f"{user.username} is the last Owner of {', '.join(sole)}; make someone else "
                "Owner there first."
            )
    user.is_active = active
    user.save(update_fields=["is_active"])
    if not active:
        _end_sessions(user)
    return user


@transaction.atomic
def user_password_reset(*, user) -> str:
    """Give the user a new one-time password (returned, to be shown once)."""
    password = _one_time_password()
    user.set_password(password)
    user.password_change_required = True
    user.save(update_fields=["password", "password_change_required"])
    _end_sessions(user)
    # An Owner resetting a password is also how a paused account gets back in.
    from portal import throttle

    throttle.signin_forgive(username=user.username)
    return password


def user_password_change(*, user, password: str) -> None:
    user.set_password(password)
    user.password_change_required = False
    user.save(update_fields=["password", "password_change_required"])


def _end_sessions(user) -> None:
    """Sign the user out everywhere (sessions are in the database)."""
    from django.contrib.sessions.models import Session

    for session in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        if str(session.get_decoded().get("_auth_user_id")) == str(user.pk):
            session.delete()


def notification_publish(
    *,
    user,
    title: str,
    body: str = "",
    level: str = Notification.Level.INFO,
    link_url: str = "",
    link_label: str = "",
    key: str = "",
) -> Notification:
    """Create (or, with the same ``key``, update) a notification and push it live.

    The row is the truth; the websocket push happens after commit and only refreshes
    what the bell shows.
    """
    fields = {
        "title": title,
        "body": body,
        "level": level,
        "link_url": link_url,
        "link_label": link_label,
        "read_at": None,
    }
    if key:
        notification, _ = Notification.objects.update_or_create(user=user, key=key, defaults=fields)
    else:
        notification = Notification.objects.create(user=user, **fields)
    notification_push(user=user, toast=notification)
    return notification


def bell_context(user) -> dict:
    """What the bell shows: the unread count and the 20 latest notifications."""
    return {
        "unread_count": Notification.objects.filter(user=user, read_at__isnull=True).count(),
        "notifications": list(Notification.objects.filter(user=user)[:20]),
    }


def notification_push(*, user, toast: Notification | None = None) -> None:
    """Push the bell (count and list) to the user's open pages, optionally with a toast."""
    html = render_to_string(
        "portal/_notifications_push.html", {**bell_context(user), "toast": toast}
    )
    realtime.publish(realtime.group_for_user(user.pk), html)


def notifications_mark_read(*, user) -> int:
    count = Notification.objects.filter(user=user, read_at__isnull=True).update(
        read_at=timezone.now()
    )
    notification_push(user=user)
    return count


def first_admin_create() -> str | None:
    """On a fresh installation, create the first Owner ``admin`` with a random password.

    Returns the password (to be shown once) or None when any user exists already.
    """
    from portal.models import User

    if User.objects.exists():
        return None
    password = secrets.token_urlsafe(15)
    User.objects.create_superuser(username="admin", email="", password=password)
    return password
