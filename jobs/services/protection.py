"""Stop protection, soft delete and the purge of soft-deleted data (docs/protection.md).

A backup item is a machine's backups; its state is on its policy (``BackupPolicy.protection``):

    protected ──stop (retain)──▶ stopped ──resume──▶ protected
        │                          │
        └──stop and delete──▶ soft deleted ──undelete──▶ stopped
                                   │ (the vault's soft-delete period passes)
                                   ▼
                         purge job ──▶ deleted (no backup data left)

Stopping pushes a new version of the policy to the agent that says so
(``protocol.POLICY_PROTECTION``), and the scheduler and ``backup_start`` refuse the machine;
its recovery points stay restorable while stopped, and retention keeps applying only when
the person chose so (``BackupPolicy.applies_retention``). Deleting is critical: the machine's
name typed, a reason, and while the vault's security features are on the person's security
PIN (``vaults.security_pin``), and the vault's alert recipients are e-mailed. The purge job
runs on the portal's worker with the account key and removes every blob of the machine's
repository (its container holds nothing else).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from agents.runtime import protocol
from agents.runtime.blobstore import BlobNotFound, StorageError
from jobs import policy_rules, services  # services: the package, for its dispatch seams
from jobs.models import BackupPolicy, Job, RecoveryPoint
from jobs.services.jobs import JobNotCancellable, job_cancel
from jobs.services.live import job_publish
from jobs.services.pruning import repository_store
from portal.models import Notification
from portal.services import notification_publish
from vaults import immutability, security_pin
from vaults.services import critical_operation_email

log = logging.getLogger(__name__)

MAX_REASON = 1000


class ProtectionRefused(Exception):
    """The item is not in a state that allows the operation, or the input is wrong; the
    message says which, in words a person can act on."""


def _policy(machine, *, lock: bool = False) -> BackupPolicy:
    qs = BackupPolicy.objects.select_related("machine", "machine__vault")
    if lock:
        qs = qs.select_for_update(of=("self",))
    policy = qs.filter(machine=machine).first()
    if policy is None:
        raise ProtectionRefused(
            f"{machine.name} has no backup policy, so it is not protected; there is nothing "
            "to stop."
        )
    return policy


def _push(policy: BackupPolicy) -> None:
    """Send the policy's new version (a stopped one says so) to a registered machine."""
    policy.version += 1
    policy.spec_hash = policy_rules.spec_hash(policy.spec())
    policy.save()
    if policy.machine.unregistered_at is None:
        services._send_to_machine(
            policy.machine,
            protocol.POLICY_TASK,
            policy=policy.spec(),
            version=policy.version,
            spec_hash=policy.spec_hash,
        )


def _cancel_backups(machine, user) -> None:
    for job in Job.objects.active().backups().filter(machine=machine):
        with contextlib.suppress(JobNotCancellable):  # it ended meanwhile
            job_cancel(job=job, user=user)


def _notify(user, *, title: str, body: str, machine, level=Notification.Level.SUCCESS) -> None:
    if user is None:
        return
    notification_publish(
        user=user,
        title=title,
        body=body,
        level=level,
        link_url=reverse("agents:detail", args=[machine.pk]),
        link_label=machine.name,
    )


def protection_stop(*, machine, user, retention: str, now: datetime | None = None) -> BackupPolicy:
    """Stop protection and retain data: no scheduled or ad hoc backup from now on, the
    recovery points kept (all of them, or as the policy's retention says)."""
    now = now or timezone.now()
    if retention not in BackupPolicy.StopRetention.values:
        raise ProtectionRefused(
            "Choose whether to keep every recovery point or keep applying the policy's retention."
        )
    with transaction.atomic():
        policy = _policy(machine, lock=True)
        if policy.protection != BackupPolicy.Protection.PROTECTED:
            raise ProtectionRefused(
                f"Protection of {machine.name} is not on ({policy.get_protection_display()})."
            )
        if machine.unregistered_at is not None:
            raise ProtectionRefused(f"{machine.name} is unregistered; it runs no backups.")
        _cancel_backups(machine, user)
        policy.protection = BackupPolicy.Protection.STOPPED
        policy.stopped_at, policy.stopped_by, policy.stop_retention = now, user, retention
        _push(policy)
        _notify(
            user,
            title="Protection stopped",
            body=f"{machine.name}: no more backups; its recovery points are kept.",
            machine=machine,
        )
    return policy


def protection_resume(*, machine, user, now: datetime | None = None) -> BackupPolicy:
    """Resume backup of a machine whose protection was stopped with its data retained:
    its policy applies again from now on (a missed scheduled time is not caught up)."""
    now = now or timezone.now()
    with transaction.atomic():
        policy = _policy(machine, lock=True)
        if policy.protection != BackupPolicy.Protection.STOPPED:
            raise ProtectionRefused(
                f"Only a machine whose protection is stopped with its data retained can be "
                f"resumed; {machine.name} is {policy.get_protection_display().lower()}."
            )
        if machine.unregistered_at is not None:
            raise ProtectionRefused(
                f"{machine.name} is unregistered; register a machine to protect it again."
            )
        policy.protection = BackupPolicy.Protection.PROTECTED
        policy.stopped_at = policy.stopped_by = None
        policy.stop_retention = ""
        policy.scheduled_through = now
        _push(policy)
        _notify(
            user,
            title="Backup resumed",
            body=f"{machine.name} is protected again by policy version {policy.version}.",
            machine=machine,
        )
    return policy


def protection_delete(
    *,
    machine,
    user,
    confirm_name: str,
    reason: str,
    pin: str,
    now: datetime | None = None,
) -> BackupPolicy:
    """Stop protection and delete backup data (critical). The item becomes soft deleted for
    the vault's soft-delete period, then the purge job removes its data; with soft delete
    off, the purge is queued at once. Raises ``ProtectionRefused`` or
    ``security_pin.PinRefused``."""
    vault = machine.vault
    reason = (reason or "").strip()
    policy = _policy(machine)
    _check_deletable(policy)
    if (confirm_name or "").strip() != machine.name:
        raise ProtectionRefused(f"Type the machine's name, {machine.name}, to confirm.")
    if not reason:
        raise ProtectionRefused("Give a reason for deleting the backup data.")
    if len(reason) > MAX_REASON:
        raise ProtectionRefused(f"Keep the reason under {MAX_REASON} characters.")
    if vault.security_features:
        security_pin.consume(
            user=user, vault=vault, pin=pin, operation=security_pin.Operation.STOP_AND_DELETE
        )
    now = now or timezone.now()
    days = vault.soft_delete_days if vault.soft_delete_enabled else 0
    with transaction.atomic():
        policy = _policy(machine, lock=True)
        _check_deletable(policy)
        _cancel_backups(machine, user)
        was_protected = policy.protection == BackupPolicy.Protection.PROTECTED
        policy.protection = BackupPolicy.Protection.SOFT_DELETED
        if was_protected:
            policy.stopped_at, policy.stopped_by = now, user
        policy.deleted_at, policy.deleted_by, policy.delete_reason = now, user, reason
        policy.purge_after = now + timedelta(days=days)
        _push(policy)
        points = RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True).count()
        if days:
            when = f"kept {days} days (until {policy.purge_after:%Y-%m-%d %H:%M} UTC)"
            after = "Undelete it before then to keep it."
        else:
            when = "removed now (soft delete is off for this vault)"
            after = "It cannot be undeleted."
        if vault.security_features:
            critical_operation_email(
                vault=vault,
                user=user,
                what=f"backup data of {machine.name} deleted",
                details=[
                    f"Machine: {machine.name}",
                    f"Recovery points: {points}",
                    f"Reason: {reason}",
                    f"The data is {when}. {after}",
                ],
            )
        _notify(
            user,
            title="Backup data deleted",
            body=f"{machine.name}: the data is {when}.",
            machine=machine,
            level=Notification.Level.WARNING,
        )
        if not days:
            services._enqueue("protection_purge_machine", str(machine.pk))
    return policy


def _check_deletable(policy: BackupPolicy) -> None:
    blocked = immutability.blocked_reason(
        policy.machine.vault, action=f"deleting the backup data of {policy.machine.name}"
    )
    if blocked:
        raise ProtectionRefused(blocked)
    if policy.protection not in (
        BackupPolicy.Protection.PROTECTED,
        BackupPolicy.Protection.STOPPED,
    ):
        raise ProtectionRefused(
            f"The backup data of {policy.machine.name} is already "
            f"{policy.get_protection_display().lower()}."
        )


def protection_undelete(*, machine, user, now: datetime | None = None) -> BackupPolicy:
    """Undelete a soft-deleted item before its period ends: it returns to "protection
    stopped, data retained" with every recovery point kept; Resume backup protects it
    again."""
    now = now or timezone.now()
    with transaction.atomic():
        policy = _policy(machine, lock=True)
        if policy.protection != BackupPolicy.Protection.SOFT_DELETED:
            raise ProtectionRefused(
                f"The backup data of {machine.name} is not soft deleted "
                f"({policy.get_protection_display().lower()})."
            )
        if policy.purge_after is not None and policy.purge_after <= now:
            raise ProtectionRefused(
                f"The soft-delete period of {machine.name} ended on "
                f"{policy.purge_after:%Y-%m-%d %H:%M} UTC; its data is being removed and can "
                "no longer be undeleted."
            )
        BackupPolicy.objects.filter(pk=policy.pk).update(
            protection=BackupPolicy.Protection.STOPPED,
            stop_retention=BackupPolicy.StopRetention.FOREVER,
            deleted_at=None,
            deleted_by=None,
            delete_reason="",
            purge_after=None,
        )
        policy.refresh_from_db()
        _notify(
            user,
            title="Backup data undeleted",
            body=f"{machine.name}: protection stopped, every recovery point kept. "
            "Resume backup to protect it again.",
            machine=machine,
        )
    return policy


def protection_purge(*, machine, now: datetime | None = None, store=None) -> Job | None:
    """Remove a soft-deleted item's data once its period has passed, as a visible job:
    every blob in the machine's container (manifests, packs, index, keys), then its
    recovery points are marked removed and the item becomes "Backup data deleted". A
    storage failure fails the job and leaves the item soft deleted, for the next run."""
    now = now or timezone.now()
    with transaction.atomic():
        policy = _policy(machine, lock=True)
        if (
            policy.protection != BackupPolicy.Protection.SOFT_DELETED
            or policy.purge_after is None
            or policy.purge_after > now
        ):
            return None
        job = Job.objects.create(
            vault_id=machine.vault_id,
            machine=machine,
            operation=Job.Operation.PURGE,
            status=Job.Status.RUNNING,
            started_at=now,
            details={"reason": policy.delete_reason},
        )
        job_publish(job)
    deleted = 0
    opened = None
    try:
        if store is None:
            store = opened = repository_store(machine)
        for blob in list(store.list("")):
            with contextlib.suppress(BlobNotFound):  # gone already: what we want
                store.delete(blob.name)
            deleted += 1
    except StorageError as exc:
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.FAILED,
            ended_at=timezone.now(),
            error=f"The backup data could not be removed ({exc}); the next run tries again.",
            details={**job.details, "blobs_deleted": deleted},
        )
        job.refresh_from_db()
        job_publish(job)
        log.warning("purge of machine %s failed: %s", machine.pk, exc)
        return job
    finally:
        if opened is not None:
            opened.close()
    with transaction.atomic():
        RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True).update(
            removed_at=now
        )
        BackupPolicy.objects.filter(pk=policy.pk).update(
            protection=BackupPolicy.Protection.DELETED, purged_at=timezone.now()
        )
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.COMPLETED,
            ended_at=timezone.now(),
            details={**job.details, "blobs_deleted": deleted},
        )
        job.refresh_from_db()
        job_publish(job)
        if machine.vault.security_features:
            critical_operation_email(
                vault=machine.vault,
                user=None,
                what=f"backup data of {machine.name} permanently removed",
                details=[
                    f"Machine: {machine.name}",
                    f"Deleted on {policy.deleted_at:%Y-%m-%d %H:%M} UTC"
                    + (f" by {policy.deleted_by.get_username()}" if policy.deleted_by else ""),
                    f"Blobs removed: {deleted}",
                ],
            )
    return job


def protection_purge_due(*, now: datetime | None = None) -> int:
    """The periodic check: purge every soft-deleted item whose period has passed. One
    machine's failure does not stop the others. Returns the number of purge jobs run."""
    now = now or timezone.now()
    due = BackupPolicy.objects.filter(
        protection=BackupPolicy.Protection.SOFT_DELETED, purge_after__lte=now
    ).select_related("machine", "machine__vault")
    count = 0
    for policy in due:
        if protection_purge(machine=policy.machine, now=now) is not None:
            count += 1
    return count


def restore_refusal(machine) -> str | None:
    """Why ``machine``'s recovery points cannot be restored now, or None: a soft-deleted
    item's points come back only with Undelete; a deleted item has none."""
    policy = BackupPolicy.objects.filter(machine=machine).only("protection", "purge_after").first()
    if policy is None:
        return None
    if policy.protection == BackupPolicy.Protection.SOFT_DELETED:
        return (
            f"The backup data of {machine.name} is soft deleted: its recovery points cannot be "
            "restored until it is undeleted (Backup items › Undelete)."
        )
    if policy.protection == BackupPolicy.Protection.DELETED:
        return f"The backup data of {machine.name} was deleted."
    return None
