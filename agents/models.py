"""Enrolled machines, as the portal knows them."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower

from agents.runtime.version import __version__ as PORTAL_AGENT_VERSION
from agents.runtime.version import is_outdated
from vaults.models import Vault

# No heartbeat for this long (agents send one a minute) and the portal shows the machine
# Offline.
OFFLINE_AFTER = timedelta(seconds=settings.HAVEN_AGENT_OFFLINE_SECONDS)

# What agents before agents.runtime.host sent: ``platform.platform()``, e.g.
# "Linux-6.1.0-18-amd64-x86_64-with-glibc2.36", "Windows-10-10.0.19045-SP0",
# "macOS-14.4-arm64-arm-64bit".
_RAW_LINUX = re.compile(
    r"^Linux-(?P<release>.+)"
    r"-(?P<arch>x86_64|aarch64|armv[0-9a-z]+|i[3-6]86|ppc64le|s390x|riscv64)(?:-with-.*)?$"
)
_RAW_MACOS = re.compile(r"^macOS-(?P<release>[0-9.]+)-(?P<arch>[^-]+)(?:-.*)?$")
_RAW_WINDOWS = re.compile(r"^Windows-(?P<release>[^-]+)-(?P<version>[0-9.]+)(?:-.*)?$")


def os_label(raw: str) -> str:
    """The OS an agent reported, in words: as given by current agents ("Debian GNU/Linux 12
    (bookworm)"); an older agent's raw platform string made readable ("Linux (kernel
    6.1.0-18-amd64, x86_64)", "Windows 10 (10.0.19045)", "macOS 14.4 (arm64)")."""
    raw = (raw or "").strip()
    windows = _RAW_WINDOWS.match(raw)
    if windows:
        return f"Windows {windows['release']} ({windows['version']})"
    linux = _RAW_LINUX.match(raw)
    if linux:
        return f"Linux (kernel {linux['release']}, {linux['arch']})"
    macos = _RAW_MACOS.match(raw)
    if macos:
        return f"macOS {macos['release']} ({macos['arch']})"
    return raw


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
    # The storage container holding this machine's repository (grants are per container,
    # so one machine's grants are revoked without touching the others').
    container = models.CharField(max_length=63, blank=True, default="")
    # The machine's own Redis ACL user ("" with the embedded filesystem broker).
    broker_username = models.CharField(max_length=100, blank=True, default="")
    # SHA-256 of the broker password (Redis ACL accepts it as ``#<hash>``), so the portal
    # can re-create the user after Redis lost its users, without knowing the password.
    broker_password_sha256 = models.CharField(max_length=64, blank=True, default="")
    # Which vault credentials file registered the machine.
    credential_id = models.UUIDField(null=True, blank=True)
    # The registration that replaced this one (``register --replace``); set with
    # ``unregistered_at``. Its data stays a source of Recover Data either way.
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaced"
    )

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

    def is_online(self, now=None) -> bool:
        from django.utils import timezone

        if self.unregistered_at is not None or self.last_seen_at is None:
            return False
        return (now or timezone.now()) - self.last_seen_at < OFFLINE_AFTER

    @property
    def os_label(self) -> str:
        return os_label(self.os_name)

    @property
    def status_label(self) -> str:
        if self.unregistered_at is not None:
            return "Unregistered"
        return "Online" if self.is_online() else "Offline"

    @property
    def is_gone(self) -> bool:
        """Unregistered or replaced: no agent answers for it, its backups stay readable."""
        return self.unregistered_at is not None

    @property
    def gone_label(self) -> str:
        """The words for a gone machine: "Unregistered on 2026-12-01", "Replaced by web-01 on
        2026-12-01" ("" while registered).
        (``replaced_by`` is read: select_related it for a list.)"""
        if self.unregistered_at is None:
            return ""
        day = f"{self.unregistered_at:%Y-%m-%d}"
        if self.replaced_by_id is not None and self.replaced_by is not None:
            return f"Replaced by {self.replaced_by.name} on {day}"
        return f"Unregistered on {day}"

    @property
    def agent_outdated(self) -> bool:
        return is_outdated(self.agent_version, PORTAL_AGENT_VERSION)


class MachineToken(models.Model):
    """A machine's API token. Only its SHA-256 is stored; the agent keeps the token."""

    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="tokens")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token of {self.machine}"


class SourceGrantAuthorisation(models.Model):
    """A person's say-so for one machine (``target``) to read another's (``source``)
    backups, for one request and until ``expires_at``. The recovery grant endpoint issues a
    read-and-list grant to the source's container only against a live one
    (jobs.recovery.services.source_grant); a machine reading its own needs none.

    Made by the portal when a person with the Recover Data role asks the target about the
    source or starts a restore or download there (``via`` portal, bound to that job), or
    when the target's command line presents vault credentials downloaded after it
    registered by such a person (``via`` credentials). Kept after expiry: the audit trail.
    """

    class Via(models.TextChoices):
        PORTAL = "portal", "Recover Data in the portal"
        CREDENTIALS = "credentials", "Vault credentials on the machine"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Machines are deleted only with their (empty) vault or by a rollback of a registration
    # that has nothing, no authorisation included (agents.services): the rows go with them.
    source = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    target = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="+")
    authorised_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    via = models.CharField(max_length=12, choices=Via.choices)
    # The vault credentials presented (via credentials), the job or question it is for.
    credential_id = models.UUIDField(null=True, blank=True)
    job_id = models.UUIDField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    grants_issued = models.PositiveIntegerField(default=0)
    last_granted_at = models.DateTimeField(null=True, blank=True)

    subscription_path = "target__vault__subscription"

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["target", "source", "-expires_at"])]

    def __str__(self) -> str:
        return f"{self.target} may read {self.source} until {self.expires_at:%Y-%m-%d %H:%M}"


class AgentMessage(models.Model):
    """The outbox: one signed task for one machine's agent, written in the transaction that
    made the work it carries (a Job row, a policy), and sent to the broker after commit by
    ``agents.dispatch`` — at once when the broker takes it, else by the portal worker's
    ``agents.outbox_send`` every few seconds until it does or the message expires.

    ``kwargs`` is the message body exactly as signed (``agents.runtime.tasksig``), so a late
    send carries the original issue time, expiry and task id: the agent still refuses it
    once expired, and runs each id once, which makes sending twice harmless.
    """

    id = models.BigAutoField(primary_key=True)
    machine = models.ForeignKey(Machine, on_delete=models.CASCADE, related_name="messages")
    queue = models.CharField(max_length=100)
    task_name = models.CharField(max_length=200)
    task_id = models.CharField(max_length=64, unique=True)
    kwargs = models.JSONField()
    # The job the message starts or stops, if any (a plain id: jobs depend on agents).
    job_id = models.UUIDField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    # Not before then (backoff); a sender also moves it forward to claim the row.
    next_attempt_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    # Given up: expired unsent (the agent would refuse it), or its machine unregistered.
    abandoned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=models.Q(sent_at__isnull=True, abandoned_at__isnull=True),
                name="agentmessage_unsent",
            ),
            models.Index(fields=["sent_at"], name="agentmessage_sent"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} [{self.task_id}] for {self.machine_id}"

    @property
    def pending(self) -> bool:
        return self.sent_at is None and self.abandoned_at is None
