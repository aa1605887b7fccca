"""Recovery Services vaults and what belongs to them on the portal side."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from portal.models import ResourceGroup, Role, Subscription


class Vault(models.Model):
    class State(models.TextChoices):
        DEPLOYING = "deploying", "Deployment in progress"
        READY = "ready", "Succeeded"
        FAILED = "failed", "Deployment failed"
        DELETING = "deleting", "Deleting"

    class Redundancy(models.TextChoices):
        GEO = "grs", "Geo-redundant"
        LOCAL = "lrs", "Locally-redundant"
        ZONE = "zrs", "Zone-redundant"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The subscription is the resource group's, kept here so the database itself enforces
    # "vault names are unique in a subscription".
    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="vaults")
    resource_group = models.ForeignKey(
        ResourceGroup, on_delete=models.PROTECT, related_name="vaults"
    )
    name = models.CharField(max_length=50)
    location = models.CharField(max_length=64)
    state = models.CharField(max_length=20, choices=State.choices, default=State.DEPLOYING)
    state_reason = models.TextField(blank=True, default="")
    redundancy = models.CharField(max_length=3, choices=Redundancy.choices, default=Redundancy.GEO)
    # The storage container holding this vault's data (named at deployment).
    container = models.CharField(max_length=63, blank=True, default="")
    # The container on the secondary account (GRS only, when one is configured).
    secondary_container = models.CharField(max_length=63, blank=True, default="")
    # Cross Region Restore: Recover Data may read the secondary copy (GRS only; once on,
    # it stays on, as in the reference).
    cross_region_restore = models.BooleanField(default=False)
    # The secondary storage as the replication worker last found it (jobs.services.replication).
    secondary_checked_at = models.DateTimeField(null=True, blank=True)
    secondary_error = models.TextField(blank=True, default="")
    deployed_at = models.DateTimeField(null=True, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        "portal.User", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Security settings (Properties › Security settings; docs/protection.md). Security
    # features: critical operations need a security PIN and email the vault's alert
    # recipients, and policies keep at least the minimum retention. On for new vaults.
    security_features = models.BooleanField(default=True)
    # Soft delete: backup data deleted with "Stop protection and delete backup data" is
    # kept this many days, restorable by Undelete, before the portal's worker removes it.
    soft_delete_enabled = models.BooleanField(default=True)
    soft_delete_days = models.PositiveSmallIntegerField(default=14)
    # Always-on soft delete cannot be turned off or shortened again (irreversible).
    soft_delete_always_on = models.BooleanField(default=False)

    class Immutability(models.TextChoices):
        # Properties › Immutable vault (vaults.immutability; docs/protection.md).
        DISABLED = "disabled", "Disabled"
        ENABLED = "enabled", "Enabled"
        LOCKED = "locked", "Locked"

    # While enabled or locked, nothing that could lose recovery points is allowed: deleting
    # backup data, lowering a policy's retention, turning soft delete off or shortening it.
    # Enabled can be disabled again; locked cannot.
    immutability = models.CharField(
        max_length=10, choices=Immutability.choices, default=Immutability.DISABLED
    )

    subscription_path = "subscription"

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                "subscription", Lower("name"), name="vault_name_ci_unique_in_subscription"
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def replicated(self) -> bool:
        """Whether the worker copies this vault's data to a secondary store."""
        return self.redundancy == self.Redundancy.GEO and bool(self.secondary_container)


class VaultCredential(models.Model):
    """One issued vault credentials file. The registration secret is kept only as a hash:
    the file the person downloaded is the only copy of the secret itself."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    vault = models.ForeignKey(Vault, on_delete=models.CASCADE, related_name="credentials")
    secret_hash = models.CharField(max_length=64, unique=True)
    issued_by = models.ForeignKey(
        "portal.User", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    # The downloader's role on the subscription when the file was issued: replacing a
    # machine needs a Contributor's or Owner's file (agents.services.machine_register).
    issued_role = models.CharField(max_length=20, choices=Role.choices, blank=True, default="")
    # Limited to one registration: the first machine registered with it uses it up.
    single_use = models.BooleanField(default=False)
    used_at = models.DateTimeField(null=True, blank=True)
    used_by_machine = models.UUIDField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        "portal.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    subscription_path = "vault__subscription"

    class Meta:
        ordering = ["-issued_at"]

    def __str__(self) -> str:
        return f"credentials {self.id} of {self.vault}"

    def status(self, now) -> str:
        if self.revoked_at:
            return "revoked"
        if self.single_use and self.used_at:
            return "used"
        if self.expires_at <= now:
            return "expired"
        return "active"


class VaultUsageSample(models.Model):
    """Backup storage used by a vault at one moment, for the overview's chart."""

    vault = models.ForeignKey(Vault, on_delete=models.CASCADE, related_name="usage_samples")
    taken_at = models.DateTimeField()
    bytes_used = models.BigIntegerField()

    class Meta:
        ordering = ["taken_at"]
        indexes = [models.Index(fields=["vault", "taken_at"])]

    def __str__(self) -> str:
        return f"{self.vault}: {self.bytes_used} B at {self.taken_at:%Y-%m-%d %H:%M}"


class SecurityPin(models.Model):
    """A security PIN (Properties › Security PIN): generated for one user and one vault,
    valid a few minutes, used once (``vaults.security_pin``). Only a keyed hash of the PIN
    is stored; the person saw it once."""

    id = models.BigAutoField(primary_key=True)
    vault = models.ForeignKey(Vault, on_delete=models.CASCADE, related_name="security_pins")
    user = models.ForeignKey("portal.User", on_delete=models.CASCADE, related_name="+")
    salt = models.CharField(max_length=32)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_for = models.CharField(max_length=100, blank=True, default="")
    # Wrong PINs typed while this one was live; too many and it is void.
    failed_attempts = models.PositiveSmallIntegerField(default=0)
    # Replaced by a newer PIN, or void after too many wrong tries.
    voided_at = models.DateTimeField(null=True, blank=True)

    subscription_path = "vault__subscription"

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["vault", "user", "-created_at"])]

    def __str__(self) -> str:
        return f"security PIN {self.pk} of {self.user_id} for {self.vault}"


class ActivityQuerySet(models.QuerySet):
    """The activity log is append-only: a queryset refuses to change or remove rows.

    One exception: deleting a user sets ``user`` to NULL on their entries (the username
    snapshot stays), which Django's deletion collector does through ``update(user=None)``.
    """

    def update(self, **kwargs):
        if set(kwargs) == {"user"} and kwargs["user"] is None:
            return super().update(**kwargs)
        raise ActivityEntry.AppendOnly("Activity log entries cannot be changed.")

    def delete(self):
        raise ActivityEntry.AppendOnly("Activity log entries cannot be deleted.")

    update.queryset_only = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]


class ActivityEntry(models.Model):
    """One critical or security-relevant operation, attempted by a person or a machine:
    who, what, on which resource, when, from which address, and how it ended.

    Append-only: ``save()`` refuses to update a stored row, ``delete()`` refuses, the
    queryset refuses ``update()``/``delete()``, and on PostgreSQL a trigger refuses UPDATE and
    DELETE (migration 0004), except a repeated refusal's count and last time going up
    (migration 0015). The vault and the resource are kept as snapshots (id and
    name, no foreign key), so an entry outlives the vault, machine or policy it names.
    Written only through ``vaults.activity.record``.
    """

    class AppendOnly(Exception):
        """Someone tried to change or delete an activity log entry."""

    class Operation(models.TextChoices):
        VAULT_CREATE = "vault.create", "Create vault"
        VAULT_DELETE = "vault.delete", "Delete vault"
        REDUNDANCY_CHANGE = "vault.redundancy", "Change storage replication type"
        CREDENTIALS_DOWNLOAD = "credentials.download", "Download vault credentials"
        CREDENTIALS_REVOKE = "credentials.revoke", "Revoke vault credentials"
        MACHINE_REGISTER = "machine.register", "Register machine"
        MACHINE_REPLACE = "machine.replace", "Replace machine"
        MACHINE_UNREGISTER = "machine.unregister", "Unregister machine"
        MACHINE_RENAME = "machine.rename", "Rename machine"
        POLICY_CHANGE = "policy.change", "Change backup policy"
        BACKUP_NOW = "backup.now", "Back up now"
        VERIFY_NOW = "verify.now", "Verify now"
        COMPACT_NOW = "compact.now", "Compact now"
        RESTORE_START = "restore.start", "Start restore"
        DOWNLOAD_START = "download.start", "Start download"
        DRILL_START = "drill.start", "Start restore drill"
        ROLE_ADD = "role.add", "Add role assignment"
        ROLE_CHANGE = "role.change", "Change role"
        ROLE_REMOVE = "role.remove", "Remove role assignment"
        PROTECTION_STOP_RETAIN = "protection.stop_retain", "Stop protection and retain data"
        PROTECTION_STOP_DELETE = "protection.stop_delete", "Stop protection and delete data"
        PROTECTION_RESUME = "protection.resume", "Resume backup"
        UNDELETE = "protection.undelete", "Undelete"
        SOFT_DELETE_SETTING = "vault.soft_delete", "Change soft delete settings"
        PIN_GENERATE = "pin.generate", "Generate security PIN"
        PIN_USE = "pin.use", "Use security PIN"
        PIN_REFUSE = "pin.refuse", "Security PIN refused"
        PASSPHRASE_CHANGE = "machine.passphrase", "Change passphrase"
        IMMUTABILITY_CHANGE = "vault.immutability", "Change immutability"
        SIGNIN_LOCKOUT = "signin.lockout", "Sign-in paused after failures"
        ALERT_ACKNOWLEDGE = "alert.acknowledge", "Acknowledge alert"
        ALERT_CLOSE = "alert.close", "Close alert"
        WEBHOOK_ADD = "webhook.add", "Add alert webhook"
        WEBHOOK_DELETE = "webhook.delete", "Delete alert webhook"
        TWO_FACTOR_REQUIRE = "subscription.two_factor", "Change two-factor requirement"
        TWO_FACTOR_RESET = "user.two_factor_reset", "Reset two-factor sign-in"

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        REFUSED = "refused", "Refused"
        FAILED = "failed", "Failed"

    at = models.DateTimeField(default=timezone.now)
    user = models.ForeignKey(
        "portal.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who, as shown: the user's name at the time, or "machine NAME" for an agent's call.
    username = models.CharField(max_length=150, blank=True, default="")
    operation = models.CharField(max_length=40, choices=Operation.choices)
    # No constraint and no reverse relation: an entry neither blocks nor follows the
    # deletion of its subscription (portal.services.contents_of does not count it).
    subscription = models.ForeignKey(
        Subscription,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    vault_id = models.UUIDField(null=True, blank=True)
    vault_name = models.CharField(max_length=50, blank=True, default="")
    resource_kind = models.CharField(max_length=40, blank=True, default="")
    resource_id = models.CharField(max_length=64, blank=True, default="")
    resource_name = models.CharField(max_length=255, blank=True, default="")
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.SUCCEEDED)
    # Why it was refused or failed, in the words the person saw.
    reason = models.TextField(blank=True, default="")
    address = models.CharField(max_length=64, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)
    # A refusal repeated by the same actor (same operation, target and reason) within one
    # window of ``vaults.activity.COALESCE_WINDOW`` is this one row, counted: ``at`` is the
    # first try, ``last_at`` the latest. ``coalesce_key`` names the actor, what was refused
    # and the window (NULL for everything else); its unique index is what the upsert of
    # ``vaults.activity.record`` conflicts on, so a repeat costs one indexed statement.
    repeat_count = models.PositiveIntegerField(default=1)
    last_at = models.DateTimeField(null=True, blank=True)
    coalesce_key = models.CharField(max_length=64, null=True, blank=True, unique=True)

    objects = ActivityQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "activity entries"
        indexes = [
            models.Index(fields=["vault_id", "-at"], name="activity_vault_at"),
            models.Index(fields=["vault_id", "operation", "-at"], name="activity_vault_op_at"),
            models.Index(fields=["subscription", "-at"], name="activity_sub_at"),
            models.Index(fields=["subscription", "operation", "-at"], name="activity_sub_op_at"),
            models.Index(fields=["subscription", "username", "-at"], name="activity_sub_user_at"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or '-'} {self.operation} {self.outcome}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise self.AppendOnly("Activity log entries cannot be changed.")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise self.AppendOnly("Activity log entries cannot be deleted.")
