"""Recovery Services vaults and what belongs to them on the portal side."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Lower

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
