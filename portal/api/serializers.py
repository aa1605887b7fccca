"""What the API sends (read-only model serializers) and the shape of what it takes (plain
serializers: types only; the rules are the services', so the API and the pages answer a
broken rule with the same words)."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents.models import Machine
from agents.runtime import protocol
from jobs import services as job_services
from jobs.models import Alert, BackupPolicy, Job, RecoveryPoint
from portal.models import PersonalAccessToken, ResourceGroup, Role, Subscription
from vaults.models import ActivityEntry, Vault

# --- out ----------------------------------------------------------------------------------


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    display_name = serializers.CharField()
    is_administrator = serializers.BooleanField()
    authenticated_by = serializers.ChoiceField(choices=["token", "session"])
    token_expires_at = serializers.DateTimeField(allow_null=True)


class SubscriptionSerializer(serializers.ModelSerializer):
    role = serializers.ChoiceField(choices=Role.choices, help_text="Your role here.")

    class Meta:
        model = Subscription
        fields = ["id", "name", "role", "created_at"]


class ResourceGroupSerializer(serializers.ModelSerializer):
    class Meta:
        model = ResourceGroup
        fields = ["id", "name", "location", "subscription", "created_at"]


class VaultSerializer(serializers.ModelSerializer):
    resource_group_name = serializers.CharField(source="resource_group.name")

    class Meta:
        model = Vault
        fields = [
            "id",
            "name",
            "subscription",
            "resource_group",
            "resource_group_name",
            "location",
            "state",
            "state_reason",
            "redundancy",
            "cross_region_restore",
            "security_features",
            "soft_delete_enabled",
            "soft_delete_days",
            "immutability",
            "tags",
            "created_at",
            "deployed_at",
        ]


class MachineSerializer(serializers.ModelSerializer):
    online = serializers.SerializerMethodField()
    registered = serializers.SerializerMethodField()
    protection = serializers.SerializerMethodField()

    class Meta:
        model = Machine
        fields = [
            "id",
            "name",
            "vault",
            "hostname",
            "os_name",
            "agent_version",
            "time_zone",
            "registered",
            "online",
            "protection",
            "registered_at",
            "last_seen_at",
            "unregistered_at",
        ]

    def get_online(self, machine) -> bool:
        return machine.is_online()

    def get_registered(self, machine) -> bool:
        return machine.unregistered_at is None

    @extend_schema_field(
        serializers.ChoiceField(choices=BackupPolicy.Protection.choices, allow_null=True)
    )
    def get_protection(self, machine) -> str | None:
        policy = getattr(machine, "backup_policy", None)
        return policy.protection if policy is not None else None


# The policy's shape; the rules (times, ranges, retention that fits the schedule) are
# jobs.policy_rules', reported under the editor's field names.
class DailyRetention(serializers.Serializer):
    days = serializers.IntegerField()


class WeeklyRetention(serializers.Serializer):
    weekdays = serializers.ListField(child=serializers.IntegerField(), default=list)
    weeks = serializers.IntegerField()


class MonthlyRetention(serializers.Serializer):
    mode = serializers.ChoiceField(choices=["day", "week"])
    days = serializers.ListField(child=serializers.IntegerField(), default=list)
    week = serializers.CharField(default="last", max_length=10)
    weekdays = serializers.ListField(child=serializers.IntegerField(), default=list)
    months = serializers.IntegerField()


class YearlyRetention(serializers.Serializer):
    months = serializers.ListField(child=serializers.IntegerField(), default=list)
    mode = serializers.ChoiceField(choices=["day", "week"])
    days = serializers.ListField(child=serializers.IntegerField(), default=list)
    week = serializers.CharField(default="last", max_length=10)
    weekdays = serializers.ListField(child=serializers.IntegerField(), default=list)
    years = serializers.IntegerField()


class Retention(serializers.Serializer):
    daily = DailyRetention(allow_null=True, required=False, default=None)
    weekly = WeeklyRetention(allow_null=True, required=False, default=None)
    monthly = MonthlyRetention(allow_null=True, required=False, default=None)
    yearly = YearlyRetention(allow_null=True, required=False, default=None)


class PolicySpec(serializers.Serializer):
    items = serializers.ListField(child=serializers.CharField(max_length=4096), max_length=1000)
    exclude_globs = serializers.ListField(
        child=serializers.CharField(max_length=1000), default=list, max_length=1000
    )
    exclude_types = serializers.ListField(
        child=serializers.CharField(max_length=100), default=list, max_length=1000
    )
    frequency = serializers.ChoiceField(choices=BackupPolicy.Frequency.choices)
    times = serializers.ListField(child=serializers.CharField(max_length=10), max_length=100)
    weekdays = serializers.ListField(child=serializers.IntegerField(), default=list)
    retention = Retention()
    initial_backup = serializers.ChoiceField(
        choices=BackupPolicy.InitialBackup.choices, default="online"
    )


class PolicySerializer(serializers.Serializer):
    machine = serializers.UUIDField(source="machine_id")
    version = serializers.IntegerField()
    spec = serializers.SerializerMethodField()
    applied_version = serializers.IntegerField(allow_null=True)
    drift = serializers.SerializerMethodField()
    protection = serializers.ChoiceField(choices=BackupPolicy.Protection.choices)
    updated_at = serializers.DateTimeField()

    @extend_schema_field(PolicySpec)
    def get_spec(self, policy) -> dict:
        spec = policy.spec()
        spec.pop(protocol.POLICY_PROTECTION, None)
        spec.pop("throttle", None)
        return spec

    def get_drift(self, policy) -> str | None:
        return job_services.policy_drift(policy)


class PolicyWrite(serializers.Serializer):
    spec = PolicySpec()
    security_pin = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=20,
        help_text="Needed when the change lowers retention on a vault with security features.",
    )


class JobSerializer(serializers.ModelSerializer):
    machine_name = serializers.CharField(source="machine.name", default=None)
    vault_name = serializers.CharField(source="vault.name")

    class Meta:
        model = Job
        fields = [
            "id",
            "operation",
            "status",
            "trigger",
            "vault",
            "vault_name",
            "machine",
            "machine_name",
            "created_at",
            "started_at",
            "ended_at",
            "scheduled_for",
            "retain_until",
            "bytes_transferred",
            "error",
            "warning_count",
            "cancel_requested_at",
        ]


class JobDetailSerializer(JobSerializer):
    progress = serializers.DictField(source="live", read_only=True)
    warnings = serializers.ListField(child=serializers.DictField(), read_only=True)

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "progress", "warnings"]


class JobFilters(serializers.Serializer):
    status = serializers.ChoiceField(choices=Job.Status.choices, required=False)
    operation = serializers.ChoiceField(choices=Job.Operation.choices, required=False)
    machine = serializers.UUIDField(required=False)
    vault = serializers.UUIDField(required=False)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)


class BackupNowWrite(serializers.Serializer):
    retain_until = serializers.DateField(
        required=False, allow_null=True, default=None, help_text="Keep the point until this day."
    )


class RecoveryPointSerializer(serializers.ModelSerializer):
    class Meta:
        model = RecoveryPoint
        fields = [
            "snapshot_id",
            "created_at",
            "kind",
            "tagged_for",
            "retain_until",
            "expires_at",
            "retention_tags",
            "file_count",
            "logical_bytes",
            "stored_bytes",
        ]


class RestoreWrite(serializers.Serializer):
    recovery_point = serializers.CharField(max_length=64, help_text="A point's snapshot_id.")
    paths = serializers.ListField(
        child=serializers.CharField(max_length=4096), min_length=1, max_length=10000
    )
    target = serializers.UUIDField(
        required=False, allow_null=True, default=None, help_text="Default: the same machine."
    )
    folder = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=4096,
        help_text="Empty: the original location.",
    )
    on_conflict = serializers.ChoiceField(
        choices=protocol.CONFLICT_CHOICES, default=protocol.CONFLICT_COPY
    )
    restore_permissions = serializers.BooleanField(default=False)
    region = serializers.ChoiceField(
        choices=[protocol.REGION_PRIMARY, protocol.REGION_SECONDARY],
        default=protocol.REGION_PRIMARY,
    )


class ResourceGroupWrite(serializers.Serializer):
    subscription = serializers.UUIDField()
    name = serializers.CharField(max_length=200, allow_blank=True)
    location = serializers.CharField(max_length=64)


class VaultWrite(serializers.Serializer):
    subscription = serializers.UUIDField()
    resource_group = serializers.IntegerField(
        required=False, allow_null=True, default=None, help_text="An existing group's id."
    )
    new_resource_group = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=200,
        help_text="Or the name of a resource group to create.",
    )
    name = serializers.CharField(max_length=200, allow_blank=True)
    location = serializers.CharField(max_length=64)
    tags = serializers.DictField(
        child=serializers.CharField(max_length=1000, allow_blank=True), default=dict
    )

    def validate_location(self, value):
        if value not in settings.HAVEN_REGIONS:
            raise serializers.ValidationError("Choose a region from the list.")
        return value


class RedundancyWrite(serializers.Serializer):
    redundancy = serializers.ChoiceField(choices=Vault.Redundancy.choices)


class AlertSerializer(serializers.ModelSerializer):
    vault_name = serializers.CharField(source="vault.name")
    machine_name = serializers.CharField(source="machine.name", default=None)
    active = serializers.SerializerMethodField()
    # Active, acknowledged or closed (docs/monitoring.md); who acknowledged or closed it.
    alert_state = serializers.CharField(source="state", read_only=True)
    acknowledged_by = serializers.CharField(
        source="acknowledged_by.username", default=None, allow_null=True, read_only=True
    )
    closed_by = serializers.CharField(
        source="closed_by.username", default=None, allow_null=True, read_only=True
    )

    class Meta:
        model = Alert
        fields = [
            "id",
            "severity",
            "kind",
            "message",
            "vault",
            "vault_name",
            "machine",
            "machine_name",
            "job",
            "active",
            "raised_at",
            "last_raised_at",
            "occurrences",
            "resolved_at",
            "alert_state",
            "acknowledged_at",
            "acknowledged_by",
            "closed_by",
        ]

    def get_active(self, alert) -> bool:
        return alert.resolved_at is None


class AlertFilters(serializers.Serializer):
    vault = serializers.UUIDField(required=False)
    state = serializers.ChoiceField(choices=["active", "resolved", "all"], default="active")


class ActivitySerializer(serializers.ModelSerializer):
    class Meta:
        model = ActivityEntry
        fields = [
            "id",
            "at",
            "operation",
            "outcome",
            "username",
            "address",
            "subscription",
            "vault_id",
            "vault_name",
            "resource_kind",
            "resource_id",
            "resource_name",
            "reason",
            "detail",
            "repeat_count",
            "last_at",
        ]
        extra_kwargs = {
            "repeat_count": {
                "help_text": "How many times this was refused: the same person or machine, "
                "operation, target and reason within 10 minutes are one entry."
            },
            "last_at": {"help_text": "When the last of those tries was (the first is `at`)."},
        }


class ActivityFilters(serializers.Serializer):
    subscription = serializers.UUIDField(required=False)
    vault = serializers.UUIDField(required=False)
    operation = serializers.ChoiceField(choices=ActivityEntry.Operation.choices, required=False)
    outcome = serializers.ChoiceField(choices=ActivityEntry.Outcome.choices, required=False)


class TokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = PersonalAccessToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "last_used_at"]


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
