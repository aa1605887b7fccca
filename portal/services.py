"""Writes for the portal's own models: subscriptions, resource groups, memberships,
notifications. Views, consumers and tasks call these; they never save these models."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from portal import realtime
from portal.models import Membership, Notification, ResourceGroup, Role, Subscription

RESOURCE_GROUP_NAME = re.compile(r"^[-\w._()]{1,90}$")


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


@transaction.atomic
def resource_group_create(*, subscription: Subscription, name: str, location: str) -> ResourceGroup:
    name = name.strip()
    problems = resource_group_name_problems(name)
    if problems:
        raise ValidationError({"name": problems})
    if ResourceGroup.objects.filter(subscription=subscription, name__iexact=name).exists():
        raise ValidationError(
            {"name": [f"A resource group named {name!r} already exists in {subscription}."]}
        )
    try:
        with transaction.atomic():
            return ResourceGroup.objects.create(
                subscription=subscription, name=name, location=location
            )
    except IntegrityError:
        raise ValidationError(
            {"name": [f"A resource group named {name!r} already exists."]}
        ) from None


@transaction.atomic
def subscription_create(*, name: str, owner) -> Subscription:
    name = name.strip()
    if not 1 <= len(name) <= 64:
        raise ValidationError({"name": ["The name must be 1 to 64 characters long."]})
    if Subscription.objects.filter(name__iexact=name).exists():
        raise ValidationError({"name": [f"A subscription named {name!r} already exists."]})
    subscription = Subscription.objects.create(name=name, created_by=owner)
    Membership.objects.create(user=owner, subscription=subscription, role=Role.OWNER)
    return subscription


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


def notification_push(*, user, toast: Notification | None = None) -> None:
    """Push the bell (count and list) to the user's open pages, optionally with a toast."""
    unread = Notification.objects.filter(user=user, read_at__isnull=True).count()
    recent = list(Notification.objects.filter(user=user)[:20])
    html = render_to_string(
        "portal/_notifications_push.html",
        {"unread_count": unread, "notifications": recent, "toast": toast},
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
    import secrets

    from portal.models import User

    if User.objects.exists():
        return None
    password = secrets.token_urlsafe(15)
    User.objects.create_superuser(username="admin", email="", password=password)
    return password
