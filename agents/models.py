"""Enrolled machines, as the portal knows them."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Lower

from vaults.models import Vault


class Machine(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    vault = models.ForeignKey(Vault, on_delete=models.PROTECT, related_name="machines")
    name = models.CharField(max_length=255)
    hostname = models.CharField(max_length=255, blank=True, default="")
    os_name = models.CharField(max_length=255, blank=True, default="")
    agent_version = models.CharField(max_length=40, blank=True, default="")
    time_zone = models.CharField(max_length=64, default="UTC")
    registered_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)
    unregistered_at = models.DateTimeField(null=True, blank=True)

    subscription_path = "vault__subscription"

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                "vault",
                Lower("name"),
                condition=models.Q(unregistered_at__isnull=True),
                name="machine_name_ci_unique_in_vault",
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        """The broker queue only this machine's agent consumes."""
        return f"agent.{self.id}"


class MachineToken(models.Model):
    """A machine's API token. Only its SHA-256 is stored; the agent keeps the token."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token of {self.machine}"
