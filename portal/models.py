"""Users, subscriptions, resource groups, memberships and notifications."""

from __future__ import annotations

import hashlib
import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models, transaction
from django.db.models.functions import Lower
from django_otp.models import Device


class User(AbstractUser):
    """A person who signs in to the portal."""

    # Set when an Owner created the account or reset its password: the one-time password
    # was shown to someone else, so sign-in leads straight to "Change password".
    password_change_required = models.BooleanField(default=False)

    @property
    def display_name(self) -> str:
        return self.get_full_name() or self.username


class Role(models.TextChoices):
    """Roles on a subscription, from most to least powerful (the reference's RBAC roles)."""

    OWNER = "owner", "Owner"
    CONTRIBUTOR = "contributor", "Contributor"
    BACKUP_OPERATOR = "backup_operator", "Backup Operator"
    READER = "reader", "Reader"

    @classmethod
    def rank(cls, role: str) -> int:
        """Higher is more powerful; a role satisfies every requirement of lower rank."""
        return {cls.READER: 1, cls.BACKUP_OPERATOR: 2, cls.CONTRIBUTOR: 3, cls.OWNER: 4}[role]


class Subscription(models.Model):
    """A billing-and-access boundary, as in Azure: vaults live in its resource groups."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Set by an Owner: every member must sign in with a second factor (portal.two_factor).
    require_two_factor = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(Lower("name"), name="subscription_name_ci_unique")]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "subscription"], name="one_membership_per_subscription"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} is {self.get_role_display()} of {self.subscription}"


class ResourceGroup(models.Model):
    subscription = models.ForeignKey(
        Subscription, on_delete=models.PROTECT, related_name="resource_groups"
    )
    name = models.CharField(max_length=90)
    location = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    # Where the subscription sits, for ``portal.access.get_for_user``.
    subscription_path = "subscription"

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                "subscription", Lower("name"), name="resource_group_name_ci_unique_in_subscription"
            )
        ]

    def __str__(self) -> str:
        return self.name


class Notification(models.Model):
    """A message in a user's bell. Features publish through ``notification_publish``."""

    class Level(models.TextChoices):
        INFO = "info", "Information"
        IN_PROGRESS = "in_progress", "In progress"
        SUCCESS = "success", "Succeeded"
        WARNING = "warning", "Warning"
        ERROR = "error", "Failed"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    # Lets a later event update the same notification (deployment started -> succeeded).
    key = models.CharField(max_length=120, blank=True, default="")
    level = models.CharField(max_length=20, choices=Level.choices, default=Level.INFO)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    link_url = models.CharField(max_length=500, blank=True, default="")
    link_label = models.CharField(max_length=80, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-updated_at", "-id"]
        indexes = [models.Index(fields=["user", "read_at"]), models.Index(fields=["user", "key"])]

    def __str__(self) -> str:
        return self.title


class SignInThrottle(models.Model):
    """Failed sign-ins of one account from one client address (``portal.throttle``)."""

    account = models.CharField(max_length=150)  # the user name as typed, case-folded
    address = models.CharField(max_length=64)
    failures = models.PositiveIntegerField(default=0)
    last_failure = models.DateTimeField(db_index=True)
    paused_until = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "address"], name="signin_throttle_pair")
        ]

    def __str__(self) -> str:
        return f"{self.account} from {self.address}: {self.failures} failures"


class PortalKey(models.Model):
    """A key every portal process of one installation must share, generated once
    (``portal.signing``): one row per ``name``, created under the unique constraint so
    two portals starting together agree on one. ``sealed`` is the key encrypted with a
    key derived from ``SECRET_KEY`` (docs/configuration.md, "Running more than one
    portal"), so a copy of the database alone does not give it away."""

    name = models.CharField(max_length=40, unique=True)
    sealed = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    origin = models.CharField(max_length=255)  # "generated" or "imported from <file>"

    def __str__(self) -> str:
        return f"{self.name} ({self.origin}, {self.created_at:%Y-%m-%d})"


class PersonalAccessToken(models.Model):
    """A person's token for the REST API (``portal.tokens``): named, expiring, revocable,
    acting with its owner's roles. Only a SHA-256 digest of the token is stored (the token
    is 256 random bits, so no slow hash is needed); the person saw the token once. The
    ``prefix`` (the token's first characters) is kept in clear so the page can tell tokens
    apart and a leaked token can be recognised."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…) of {self.user}"

    def status(self, now) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= now:
            return "expired"
        return "active"


class RecoveryCodes(Device):
    """A user's one-time recovery codes, a second factor for a lost authenticator app.

    Only SHA-256 digests are kept (django-otp's own static device stores the codes as
    typed): each code carries 50 random bits, so a fast hash is as good as a slow one.
    A code is crossed off when it is used (``portal.two_factor``)."""

    digests = models.JSONField(default=list)

    def verify_token(self, token) -> bool:
        """Cross the code off if it is one of ours; a second use of it fails."""
        digest = recovery_code_digest(str(token))
        with transaction.atomic():
            row = RecoveryCodes.objects.select_for_update().filter(pk=self.pk).first()
            if row is None or digest not in row.digests:
                return False
            row.digests.remove(digest)
            row.save(update_fields=["digests"])
        self.digests = row.digests
        return True


def recovery_code_digest(code: str) -> str:
    """Codes are compared without case, spaces or dashes, as people copy them."""
    normal = "".join(ch for ch in code.casefold() if ch.isalnum())
    return hashlib.sha256(normal.encode()).hexdigest()
