"""Backup policies, scheduled runs, jobs, recovery points and alerts."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from agents.runtime import throttling
from agents.runtime.protocol import (
    ACTIVE_STATUSES,
    DRILL_DEFAULT_CAP_MB,
    DRILL_DEFAULT_PERCENT,
    DRILL_SAMPLE,
    DRILL_WHOLE,
    FINISHED_STATUSES,
    POLICY_PROTECTION,
    POLICY_SEED_STAGING,
    POLICY_SYSTEM_STATE,
    PROTECTION_STOPPED,
    JobStatus,
)
from jobs import policy_rules
from jobs.schedule import DAILY, WEEKLY


class BackupPolicy(models.Model):
    """A machine's backup policy, authored in the portal and applied by its agent.

    ``version``/``spec_hash`` change on every save; the agent reports the hash it applied
    (``applied_*``), so the portal can show drift and why.
    """

    class Frequency(models.TextChoices):
        DAILY = DAILY, "Day"
        WEEKLY = WEEKLY, "Week"

    class InitialBackup(models.TextChoices):
        ONLINE = "online", "Automatically over the network"
        OFFLINE = "offline", "Offline (seed from a disk)"

    class Protection(models.TextChoices):
        # The backup item's state (docs/protection.md); the policy row carries it because
        # every machine that ever backed up has one, and the agent learns it with the
        # policy (``spec()``).
        PROTECTED = "protected", "Protected"
        STOPPED = "stopped", "Protection stopped, data retained"
        SOFT_DELETED = "soft_deleted", "Soft deleted"
        DELETED = "deleted", "Backup data deleted"

    class StopRetention(models.TextChoices):
        FOREVER = "forever", "Keep all recovery points until deleted"
        POLICY = "policy", "Keep applying the policy's retention"

    class DrillFrequency(models.TextChoices):
        MONTHLY = "monthly", "Every month"
        WEEKLY = "weekly", "Every week"
        OFF = "off", "Never (on demand only)"

    class DrillSample(models.TextChoices):
        SAMPLE = DRILL_SAMPLE, "A sample of the files"
        WHOLE = DRILL_WHOLE, "The whole recovery point"

    machine = models.OneToOneField(
        "agents.Machine", on_delete=models.CASCADE, related_name="backup_policy"
    )
    items = models.JSONField(default=list)
    exclude_globs = models.JSONField(default=list, blank=True)
    exclude_types = models.JSONField(default=list, blank=True)
    frequency = models.CharField(max_length=10, choices=Frequency.choices, default=DAILY)
    times = models.JSONField(default=list)  # ["HH:MM", ...] in the machine's zone
    weekdays = models.JSONField(default=list, blank=True)  # 0 = Monday, weekly only
    retention = models.JSONField(default=dict)
    initial_backup = models.CharField(
        max_length=10, choices=InitialBackup.choices, default=InitialBackup.ONLINE
    )
    # Network throttling on a schedule (agents.runtime.throttling); {}: never set, so a
    # policy without one keeps the hash it had before throttling existed.
    throttle = models.JSONField(default=dict, blank=True)
    # System State collected before each backup (docs/system-state.md), and the offline
    # seed's staging folder (docs/seeding.md); in the spec only when set, so a policy
    # without them keeps the hash it had before they existed.
    system_state = models.BooleanField(default=False)
    seed_staging = models.CharField(max_length=400, blank=True, default="")
    version = models.PositiveIntegerField(default=1)
    spec_hash = models.CharField(max_length=64, default="")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    applied_version = models.PositiveIntegerField(null=True, blank=True)
    applied_hash = models.CharField(max_length=64, blank=True, default="")
    applied_at = models.DateTimeField(null=True, blank=True)
    apply_error = models.TextField(blank=True, default="")
    # The scheduler has created runs for every scheduled time up to here.
    scheduled_through = models.DateTimeField(null=True, blank=True)
    # Stop protection, soft delete and purge (jobs.services.protection).
    protection = models.CharField(
        max_length=12, choices=Protection.choices, default=Protection.PROTECTED
    )
    stopped_at = models.DateTimeField(null=True, blank=True)
    stopped_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    stop_retention = models.CharField(
        max_length=10, choices=StopRetention.choices, blank=True, default=""
    )
    deleted_at = models.DateTimeField(null=True, blank=True)
    deleted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    delete_reason = models.TextField(blank=True, default="")
    # Soft-deleted data is removed (the purge job) from then on.
    purge_after = models.DateTimeField(null=True, blank=True)
    purged_at = models.DateTimeField(null=True, blank=True)
    # Verify jobs (jobs.services.verify, docs/verify.md): weekly, each reads one slice of
    # the packs, so every pack is read once every ``verify_weeks`` weeks; not part of the
    # spec (the agent learns its slice from the job).
    verify_weeks = models.PositiveSmallIntegerField(default=4)
    verify_slice = models.PositiveSmallIntegerField(default=0)  # the next slice to read
    verify_due_at = models.DateTimeField(null=True, blank=True)  # the next scheduled verify
    # Restore drills (jobs.services.drills, docs/drills.md): how often, what is restored,
    # where. Not part of ``spec()``: the agent gets a drill's settings with the drill.
    drill_frequency = models.CharField(
        max_length=10, choices=DrillFrequency.choices, default=DrillFrequency.MONTHLY
    )
    drill_sample = models.CharField(
        max_length=10, choices=DrillSample.choices, default=DrillSample.SAMPLE
    )
    drill_percent = models.FloatField(default=DRILL_DEFAULT_PERCENT)
    drill_cap_mb = models.PositiveIntegerField(default=DRILL_DEFAULT_CAP_MB)
    # The machine the drill restores on (None: this machine) and the folder it writes in
    # (empty: the agent's cache folder).
    drill_machine = models.ForeignKey(
        "agents.Machine", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    drill_scratch = models.CharField(max_length=500, blank=True, default="")
    # Who chose another machine for the drills: the authorisation that machine's read of
    # this one's backups stands on (a Contributor or Owner, checked again at each drill).
    drill_authorised_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Drills are judged (missed or not) from here: the policy's first drill settings.
    drill_since = models.DateTimeField(default=timezone.now)

    subscription_path = "machine__vault__subscription"

    def __str__(self) -> str:
        return f"policy of {self.machine}"

    def spec(self) -> dict:
        spec = {
            "items": self.items,
            "exclude_globs": self.exclude_globs,
            "exclude_types": self.exclude_types,
            "frequency": self.frequency,
            "times": self.times,
            "weekdays": self.weekdays,
            "retention": self.retention,
            "initial_backup": self.initial_backup,
        } | ({"throttle": self.throttle} if self.throttle else {})
        if self.system_state:
            spec[POLICY_SYSTEM_STATE] = True
        if self.seed_staging:
            spec[POLICY_SEED_STAGING] = self.seed_staging
        if self.protection != self.Protection.PROTECTED:
            # The "stopped" policy the agent is sent: it runs no backup of it.
            spec[POLICY_PROTECTION] = PROTECTION_STOPPED
        return spec

    @property
    def is_protected(self) -> bool:
        return self.protection == self.Protection.PROTECTED

    @property
    def applies_retention(self) -> bool:
        """Retention removes expired points of a protected item, and of a stopped one only
        when the person chose to keep applying it; a stopped-and-keep-all or soft-deleted
        item keeps every point as it is."""
        return self.protection == self.Protection.PROTECTED or (
            self.protection == self.Protection.STOPPED
            and self.stop_retention == self.StopRetention.POLICY
        )

    def set_spec(self, spec: dict) -> None:
        # present only when set: a spec without them turns them off
        self.system_state = bool(spec.get(POLICY_SYSTEM_STATE))
        self.seed_staging = spec.get(POLICY_SEED_STAGING) or ""
        for key, value in spec.items():
            if key != POLICY_PROTECTION:
                setattr(self, key, value)
        self.spec_hash = policy_rules.spec_hash(self.spec())

    @property
    def throttle_summary(self) -> str:
        """Its network throttling in a line ("off" or the rates, days and hours)."""
        return throttling.describe(self.throttle)

    @property
    def drifted(self) -> bool:
        return self.applied_hash != self.spec_hash


class ScheduledRun(models.Model):
    """One scheduled time of a policy that the scheduler acted on. The unique constraint is
    what makes a tick run twice harmless."""

    policy = models.ForeignKey(BackupPolicy, on_delete=models.CASCADE, related_name="runs")
    scheduled_for = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    job = models.OneToOneField(
        "Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="scheduled_run"
    )
    # Long-term tags this run would have given its point (for the ad hoc exception).
    long_term_tags = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["policy", "scheduled_for"], name="one_run_per_time")
        ]
        indexes = [models.Index(fields=["policy", "-scheduled_for"])]

    def __str__(self) -> str:
        return f"{self.policy} at {self.scheduled_for:%Y-%m-%d %H:%M}"


class JobQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=Job.ACTIVE)

    def backups(self):
        """Backups, to the cloud or to a seed disk: one at a time per machine."""
        return self.filter(operation__in=Job.BACKUP_OPERATIONS)


class Job(models.Model):
    class Operation(models.TextChoices):
        BACKUP = "backup", "Backup"
        RESTORE = "restore", "Restore"
        PRUNE = "prune", "Prune"
        REPLICATE = "replicate", "Replicate"
        IMPORT = "import", "Import"
        VERIFY = "verify", "Verify"
        CONFIGURE = "configure", "Configure backup"
        PURGE = "purge", "Delete backup data"
        DRILL = "drill", "Restore drill"
        COMPACT = "compact", "Compact"
        # An Offline policy's first backup, written by the agent to the seed staging folder
        # (docs/seeding.md); a backup for the one-at-a-time rule.
        SEED_EXPORT = "seed_export", "Offline backup to disk"

    class Status(models.TextChoices):
        # The values are the wire's (agents.runtime.protocol.JobStatus); the labels are ours.
        QUEUED = JobStatus.QUEUED.value, "Queued"
        WAITING = JobStatus.WAITING.value, "Waiting for agent"
        RUNNING = JobStatus.RUNNING.value, "In progress"
        COMPLETED = JobStatus.COMPLETED.value, "Completed"
        WARNING = JobStatus.WARNING.value, "Completed with warnings"
        FAILED = JobStatus.FAILED.value, "Failed"
        CANCELLED = JobStatus.CANCELLED.value, "Cancelled"

    class Trigger(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        ADHOC = "adhoc", "Ad hoc"

    ACTIVE = tuple(map(Status, ACTIVE_STATUSES))
    FINISHED = tuple(map(Status, FINISHED_STATUSES))
    BACKUP_OPERATIONS = (Operation.BACKUP, Operation.SEED_EXPORT)
    STATUS_CLASS = {
        Status.QUEUED: "status-muted",
        Status.WAITING: "status-warning",
        Status.RUNNING: "status-running",
        Status.COMPLETED: "status-ok",
        Status.WARNING: "status-warning",
        Status.FAILED: "status-error",
        Status.CANCELLED: "status-muted",
    }

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Jobs are the history and the audit trail (a download is a job): deleting a machine
    # or a vault never takes them along by cascade (PROTECT); a machine is unregistered,
    # and a vault's history is removed on purpose when the vault is deleted
    # (``jobs.services.vault_history_delete``).
    vault = models.ForeignKey("vaults.Vault", on_delete=models.PROTECT, related_name="jobs")
    machine = models.ForeignKey(
        "agents.Machine", null=True, blank=True, on_delete=models.PROTECT, related_name="jobs"
    )
    operation = models.CharField(max_length=12, choices=Operation.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.ADHOC)
    scheduled_for = models.DateTimeField(null=True, blank=True)
    retain_until = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Back up now asked for on the machine itself (``haven-agent backup``), not in the portal.
    started_on_machine = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    last_report_at = models.DateTimeField(null=True, blank=True)
    # The latest progress event as the agent sent it (schema: docs/jobs.md).
    progress = models.JSONField(default=dict, blank=True)
    bytes_transferred = models.BigIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    warnings = models.JSONField(default=list, blank=True)  # [{"path", "reason"}]
    warning_count = models.PositiveIntegerField(default=0)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)  # operation-specific inputs
    # The id of the agent's result that ended the job (protocol.RESULT_ID): the same result
    # posted again gets the same answer, a different one is refused.
    result_id = models.UUIDField(null=True, blank=True)

    objects = JobQuerySet.as_manager()
    subscription_path = "vault__subscription"

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # Covering (PostgreSQL): the jobs list's counts by status over a time range are
            # an index-only scan instead of a visit to every matching job's row.
            models.Index(
                fields=["-created_at"], include=["status", "vault"], name="job_created_covering"
            ),
            models.Index(fields=["status", "-created_at"], name="job_status_created"),
            models.Index(fields=["vault", "-created_at"], name="job_vault_created"),
            models.Index(fields=["machine", "-created_at"], name="job_machine_created"),
            models.Index(fields=["operation", "-created_at"], name="job_operation_created"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["machine"],
                condition=Q(
                    operation__in=["backup", "seed_export"],
                    status__in=[s.value for s in ACTIVE_STATUSES],
                ),
                name="one_active_backup_per_machine",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_operation_display()} job {self.id}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def status_class(self) -> str:
        return self.STATUS_CLASS[self.status]

    @property
    def duration(self):
        if self.started_at is None:
            return None
        return (self.ended_at or timezone.now()) - self.started_at


class RecoveryPoint(models.Model):
    class Kind(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        ADHOC = "adhoc", "Ad hoc"

    # PROTECT, like Job's: a recovery point is never erased by deleting its machine.
    machine = models.ForeignKey(
        "agents.Machine", on_delete=models.PROTECT, related_name="recovery_points"
    )
    vault = models.ForeignKey("vaults.Vault", on_delete=models.PROTECT, related_name="+")
    job = models.OneToOneField(
        Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="recovery_point"
    )
    snapshot_id = models.CharField(max_length=64)  # the engine's recovery point id
    manifest_blob = models.CharField(max_length=200)
    created_at = models.DateTimeField()
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # The scheduled time the point stands for (its own time for ad hoc points).
    tagged_for = models.DateTimeField()
    inherited_from = models.DateTimeField(null=True, blank=True)
    retain_until = models.DateField(null=True, blank=True)
    logical_bytes = models.BigIntegerField(default=0)
    new_bytes = models.BigIntegerField(default=0)
    stored_bytes = models.BigIntegerField(default=0)
    file_count = models.BigIntegerField(default=0)
    retention_tags = models.JSONField(default=list, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    pack_ids = models.JSONField(default=list, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True)
    # A verify job found data this point needs damaged (jobs.services.verify): when, and
    # {"job", "packs", "reasons", "files"} (files: a sample of the paths affected).
    verify_damaged_at = models.DateTimeField(null=True, blank=True)
    verify_damage = models.JSONField(default=dict, blank=True)

    subscription_path = "vault__subscription"

    class Meta:
        ordering = ["-created_at"]
        # A point belongs to the machine whose repository holds it: keyed on the machine, so
        # one machine's report can never name (and move) another machine's point.
        constraints = [
            models.UniqueConstraint(
                fields=["machine", "snapshot_id"], name="one_point_per_machine_snapshot"
            )
        ]
        indexes = [
            models.Index(fields=["machine", "removed_at", "-created_at"]),
            models.Index(fields=["snapshot_id"], name="point_snapshot"),
        ]

    def __str__(self) -> str:
        return f"{self.machine} at {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def is_damaged(self) -> bool:
        return self.verify_damaged_at is not None


class Alert(models.Model):
    class Severity(models.TextChoices):
        CRITICAL = "critical", "Critical"
        WARNING = "warning", "Warning"

    class Kind(models.TextChoices):
        BACKUP_FAILED = "backup_failed", "Backup failure"
        RESTORE_FAILED = "restore_failed", "Restore failure"
        BACKUP_WARNINGS = "backup_warnings", "Backup completed with warnings"
        NO_RECENT_BACKUP = "no_recent_backup", "No recent backup"
        REPLICATION_LAG = "replication_lag", "Replication lag"
        VERIFY_DAMAGE = "verify_damage", "Verify found damage"
        VERIFY_FAILED = "verify_failed", "Verify failure"
        DRILL_FAILED = "drill_failed", "Restore drill failed"
        DRILL_MISSED = "drill_missed", "Restore drill missed"

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"
        CLOSED = "closed", "Closed"

    vault = models.ForeignKey("vaults.Vault", on_delete=models.PROTECT, related_name="alerts")
    machine = models.ForeignKey(
        "agents.Machine", null=True, blank=True, on_delete=models.PROTECT, related_name="alerts"
    )
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    severity = models.CharField(max_length=10, choices=Severity.choices)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    message = models.TextField()
    raised_at = models.DateTimeField(auto_now_add=True)
    last_raised_at = models.DateTimeField(auto_now_add=True)
    occurrences = models.PositiveIntegerField(default=1)
    resolved_at = models.DateTimeField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    # Azure's alert states (docs/monitoring.md): Active, Acknowledged (someone is on it; a
    # repeat keeps it so), Closed (``resolved_at``: by the portal when the condition clears,
    # or by a person, ``closed_by``).
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    subscription_path = "vault__subscription"

    class Meta:
        ordering = ["-last_raised_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["machine", "kind"],
                condition=Q(resolved_at__isnull=True),
                name="one_open_alert_per_machine_kind",
            )
        ]
        indexes = [models.Index(fields=["vault", "resolved_at", "-last_raised_at"])]

    def __str__(self) -> str:
        return f"{self.get_severity_display()}: {self.message[:60]}"

    @property
    def state(self) -> str:
        if self.resolved_at is not None:
            return self.State.CLOSED
        if self.acknowledged_at is not None:
            return self.State.ACKNOWLEDGED
        return self.State.ACTIVE

    def get_state_display(self) -> str:
        return self.State(self.state).label


class ReplicaState(models.Model):
    """How far a machine's container is copied to the vault's secondary store (GRS), as the
    last replication pass found it (jobs.services.replication). Blobs are write-once, so
    "what is copied" is simply what the secondary holds; this row keeps the lag for pages
    and alerts, the lease that keeps two passes from copying the same blob, and deletions
    the secondary still owes."""

    machine = models.OneToOneField(
        "agents.Machine", on_delete=models.CASCADE, related_name="replica_state"
    )
    vault = models.ForeignKey("vaults.Vault", on_delete=models.CASCADE, related_name="+")
    checked_at = models.DateTimeField(null=True, blank=True)
    # The listing time of the last pass that left nothing behind: every blob the primary
    # held then is on the secondary.
    synced_through = models.DateTimeField(null=True, blank=True)
    pending_blobs = models.PositiveIntegerField(default=0)
    pending_bytes = models.BigIntegerField(default=0)
    # The oldest blob not yet copied (its time on the primary); None when none is known.
    oldest_pending_at = models.DateTimeField(null=True, blank=True)
    copied_blobs = models.BigIntegerField(default=0)
    copied_bytes = models.BigIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    lease_until = models.DateTimeField(null=True, blank=True)
    pending_deletes = models.JSONField(default=list, blank=True)

    subscription_path = "vault__subscription"

    def __str__(self) -> str:
        return f"replica of {self.machine}"


class PassphraseChange(models.Model):
    """One ``haven-agent change-passphrase`` (jobs.services.passphrase, docs/protection.md).

    The portal authorises it (a security PIN) and lists the key blobs the repository holds
    then (``old_keys``); the machine uploads a new key blob (``new_key``) and reports it;
    once ``retire_after`` (the vault's soft-delete period later) has passed, the portal's
    worker deletes ``old_keys`` and sets ``retired_at``. The machine's SAS cannot delete,
    so nothing it does can remove an old key sooner."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    machine = models.ForeignKey(
        "agents.Machine", on_delete=models.CASCADE, related_name="passphrase_changes"
    )
    vault = models.ForeignKey("vaults.Vault", on_delete=models.CASCADE, related_name="+")
    # The person who generated the security PIN typed on the machine.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    authorized_at = models.DateTimeField(default=timezone.now)
    old_keys = models.JSONField(default=list, blank=True)
    new_key = models.CharField(max_length=64, blank=True, default="")
    completed_at = models.DateTimeField(null=True, blank=True)
    retire_after = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    subscription_path = "vault__subscription"

    class Meta:
        ordering = ["-authorized_at"]
        indexes = [models.Index(fields=["retire_after"], name="jobs_ppchange_retire_idx")]

    def __str__(self) -> str:
        return f"passphrase change of {self.machine}"


class Webhook(models.Model):
    """Where a vault's alert events are POSTed (jobs.services.webhooks, docs/monitoring.md)."""

    class Format(models.TextChoices):
        GENERIC = "generic", "Generic JSON"
        SLACK = "slack", "Slack-compatible"
        TEAMS = "teams", "Microsoft Teams"

    vault = models.ForeignKey("vaults.Vault", on_delete=models.CASCADE, related_name="webhooks")
    name = models.CharField(max_length=80)
    url = models.URLField(max_length=500)
    format = models.CharField(max_length=10, choices=Format.choices, default=Format.GENERIC)
    # Signs each body (HMAC-SHA256) when set; kept as given, since signing needs it.
    secret = models.CharField(max_length=200, blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    subscription_path = "vault__subscription"

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def masked_url(self) -> str:
        """The URL without its path and query, which for chat tools is the credential
        (``https://hooks.slack.com/…``): what those who may not configure it see."""
        parts = urlsplit(self.url)
        rest = "…" if (parts.path not in ("", "/") or parts.query) else ""
        return f"{parts.scheme}://{parts.netloc}/{rest}"


class WebhookDelivery(models.Model):
    """The webhook outbox: one alert event for one webhook, written in the transaction that
    changed the alert and POSTed by the portal worker after commit, retried with backoff
    (``jobs.services.webhooks``). ``body`` is built at the event, so a late try still says
    what happened then; ``tries`` keeps each attempt (time, HTTP status, error)."""

    class Event(models.TextChoices):
        RAISED = "alert.raised", "Alert raised"
        ACKNOWLEDGED = "alert.acknowledged", "Alert acknowledged"
        CLOSED = "alert.closed", "Alert closed"
        TEST = "test", "Test"

    id = models.BigAutoField(primary_key=True)
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    alert = models.ForeignKey(
        Alert, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    event = models.CharField(max_length=20, choices=Event.choices)
    body = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    tries = models.JSONField(default=list, blank=True)
    # Not before then (backoff); a sender moves it forward to claim the row.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    abandoned_at = models.DateTimeField(null=True, blank=True)

    subscription_path = "webhook__vault__subscription"

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=Q(delivered_at__isnull=True, abandoned_at__isnull=True),
                name="webhookdelivery_pending",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event} to {self.webhook_id}"

    @property
    def outcome(self) -> str:
        if self.delivered_at is not None:
            return "Delivered"
        if self.abandoned_at is not None:
            return "Failed"
        return "Retrying" if self.attempts else "Pending"
