from django.apps import AppConfig

MINUTE, HOUR, DAY = 60, 3600, 86400


class JobsConfig(AppConfig):
    name = "jobs"

    def ready(self):
        from portal import live
        from portal.celery import register_periodic

        # The "vault" kind (group vault.<id>) is the vaults app's; job rows are pushed there.
        live.register("job", _job_group)
        live.register("fleet", _fleet_group)
        live.register("policy", _policy_group)
        register_periodic("jobs.schedule_tick", "jobs.schedule_tick", MINUTE)
        register_periodic("jobs.sweep", "jobs.sweep", MINUTE)
        register_periodic("jobs.verify_tick", "jobs.verify_tick", HOUR)
        register_periodic("jobs.retention_apply_all", "jobs.retention_apply_all", DAY)
        register_periodic("jobs.alerts_check", "jobs.alerts_check", HOUR)
        register_periodic("jobs.alerts_digest", "jobs.alerts_digest", HOUR)
        from django.conf import settings

        register_periodic(
            "jobs.replicate_all", "jobs.replicate_all", settings.HAVEN_REPLICATION_INTERVAL_SECONDS
        )
        # Soft-deleted data whose period has passed is removed within the hour.
        register_periodic("jobs.protection_purge_due", "jobs.protection_purge_due", HOUR)
        # Old key blobs of a changed passphrase go within the hour after their period.
        register_periodic(
            "jobs.passphrase_keys_retire_due", "jobs.passphrase_keys_retire_due", HOUR
        )
        # Alert webhooks that failed are retried once their backoff (30 s and up) has passed.
        register_periodic("jobs.webhooks_send_due", "jobs.webhooks_send_due", 30)
        _register_vault_hooks()
        _register_dispatch_hooks()
        _register_activity_words()


def _register_activity_words() -> None:
    """The activity log's Details in words: a policy change's settings by their editor's
    names, alerts' and webhooks' codes by their labels."""
    from jobs import policy_rules
    from jobs.models import Alert, Webhook
    from vaults import activity

    activity.register_detail_words(
        labels={**policy_rules.SETTING_LABELS, "severity": "Severity", "kind": "Alert",
                "format": "Format"},
        values={
            **policy_rules.setting_value_labels(),
            "severity": {str(v): str(label) for v, label in Alert.Severity.choices},
            "kind": {str(v): str(label) for v, label in Alert.Kind.choices},
            "format": {str(v): str(label) for v, label in Webhook.Format.choices},
        },
    )  # fmt: skip


def _register_dispatch_hooks() -> None:
    from agents import dispatch
    from jobs.services import outbox

    dispatch.register_changed_handler(outbox.job_message_changed)
    dispatch.register_undeliverable_handler(outbox.job_message_undeliverable)


def _fleet_group(user, subscription_id: str) -> str | None:
    """The Backup center watches each subscription it shows (``?watch=fleet:<id>``)."""
    from portal import access, realtime

    subscription = access.subscription_for_user(user, subscription_id)
    return realtime.group_for_fleet(subscription.pk)


def _policy_group(user, machine_id: str) -> str | None:
    """The policy and throttling pages watch whether the agent applied the machine's policy
    (``?watch=policy:<machine id>``), for a machine the user can read."""
    from agents.models import Machine
    from portal.access import get_for_user

    machine = get_for_user(user, Machine, pk=machine_id)
    return f"policy.{machine.pk}"


def _job_group(user, job_id: str) -> str | None:
    """Pages may watch a job they can read (``?watch=job:<id>``)."""
    from jobs.models import Job
    from jobs.services import job_group
    from portal.access import get_for_user

    job = get_for_user(user, Job, pk=job_id)
    return job_group(job.pk)


def _register_vault_hooks() -> None:
    try:
        from vaults import selectors
    except ImportError:  # the vaults app without hooks
        return
    from jobs import selectors as job_selectors

    if hasattr(selectors, "register_overview_counter"):
        selectors.register_overview_counter(job_selectors.vault_overview)
    if hasattr(selectors, "register_delete_blocker"):
        selectors.register_delete_blocker(_points_block_delete)
    if hasattr(selectors, "register_protection_check"):
        selectors.register_protection_check(_points_lock_redundancy)
    if hasattr(selectors, "register_replication_reader"):
        selectors.register_replication_reader(job_selectors.vault_replication_status)
    from vaults import services as vault_services

    if hasattr(vault_services, "register_history_remover"):
        vault_services.register_history_remover(_history_delete)


def _history_delete(vault) -> None:
    from jobs import services

    services.vault_history_delete(vault=vault)


def _points_block_delete(vault):
    """One blocker per backup item that still holds data (recovery points), with what to do
    and a link to it: delete its backup data, or wait for (or shorten) its soft delete."""
    from django.db.models import Count, Q
    from django.urls import reverse

    from agents.models import Machine
    from jobs.models import BackupPolicy
    from vaults.immutability import is_immutable
    from vaults.models import Vault
    from vaults.selectors import DeleteBlocker

    machines = (
        Machine.objects.filter(vault=vault)
        .annotate(
            live_points=Count("recovery_points", filter=Q(recovery_points__removed_at__isnull=True))
        )
        .filter(live_points__gt=0)
        .select_related("backup_policy")
        .order_by("name")
    )
    blockers = []
    for machine in machines:
        policy = getattr(machine, "backup_policy", None)
        points = f"{machine.live_points} recovery point{'s' if machine.live_points != 1 else ''}"
        if policy is not None and policy.protection == BackupPolicy.Protection.SOFT_DELETED:
            when = f"{policy.purge_after:%Y-%m-%d %H:%M} UTC" if policy.purge_after else "soon"
            action = f"Its data is removed for good on {when}; the vault can be deleted after."
            if not vault.soft_delete_always_on and not is_immutable(vault):
                action += (
                    " To remove it sooner: Undelete it, turn soft delete off (Properties › "
                    "Security settings), then delete its backup data again."
                )
            blockers.append(
                DeleteBlocker(
                    what=f"{machine.name}: soft deleted ({points})",
                    action=action,
                    link_url=reverse("agents:detail", args=[machine.pk]),
                )
            )
            continue
        state = policy.get_protection_display().lower() if policy else "not protected"
        if policy is not None and policy.is_protected and machine.unregistered_at:
            state = "unregistered"
        if vault.immutability == Vault.Immutability.LOCKED:
            action = (
                "The vault is a locked immutable vault: its backup data cannot be deleted, "
                "so the vault cannot be deleted while it holds any."
            )
        elif is_immutable(vault):
            action = (
                "Disable immutability (Properties › Immutable vault), then stop protection "
                "and delete its backup data (Stop backup › Delete backup data)."
            )
        else:
            action = (
                "Stop protection and delete its backup data (Stop backup › Delete backup data)."
            )
        blockers.append(
            DeleteBlocker(
                what=f"{machine.name}: {state} ({points})",
                action=action,
                link_url=reverse("jobs:protection_stop", args=[machine.pk]) + "?choice=delete",
            )
        )
    return blockers


def _points_lock_redundancy(vault):
    from jobs.models import RecoveryPoint

    if RecoveryPoint.objects.filter(vault=vault).exists():
        return (
            "Backup data exists in this vault; its storage replication type can no longer change."
        )
    return None
