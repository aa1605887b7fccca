"""Pruning a machine's repository: apply retention (re-tag the recovery points under the
current policy, remove the expired ones and their manifests) and collect the packs no kept
point references. The portal does this with the storage account key; the agent never
deletes. A geo-redundant vault's secondary copy loses the same blobs (``secondary_delete``). Blob names are the engine's (``agents.runtime.engine.layout``).

Collection never races a backup. The engine lists ``data/`` when a backup starts and
deduplicates against every pack it finds, those of interrupted runs included, so a pack
deleted after that listing could be referenced by the point the backup commits. Like
restic's exclusive prune lock, the fence is one lock per machine, here the machine's row
(``repository_fence``): the agent's start report (``job_mark_started``) and the result that
records a point take it, and collection deletes each pack under it after checking that no
backup of the machine is in flight (``backup_in_flight``) and that no point was recorded
since it read the references. So a backup that has started sees every deletion finished,
and no deletion begins once it has. docs/storage-format.md, "Garbage collection".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents.models import Machine
from agents.runtime.blobstore import BlobInfo, BlobNotFound, StorageError
from agents.runtime.engine import layout
from jobs import retention
from jobs.models import Alert, BackupPolicy, Job, RecoveryPoint
from jobs.schedule import zone
from jobs.services.replication import secondary_delete
from vaults import storage

log = logging.getLogger(__name__)


def repository_store(machine):
    """The machine's repository: each machine keeps it in a container of its own
    (``Machine.container``), opened here with the account key, which may delete."""
    return storage.primary_account().store(machine.container)


def _packs(store) -> list[BlobInfo]:
    return list(store.list(layout.DATA_PREFIX))


def pack_ids_present(store) -> set[str]:
    """The ids of the packs in a repository, from one listing of ``data/``."""
    return {layout.pack_id_of(blob.name) for blob in _packs(store)}


@contextlib.contextmanager
def repository_fence(*machine_ids) -> Iterator[None]:
    """A transaction holding the machine's lock: a backup's start, the recording of a
    point and each deletion of a pack are serialised by it. PostgreSQL locks the machine's
    row; SQLite's IMMEDIATE transactions (settings.py) serialise every writer anyway.

    With more than one machine (a drill that another machine runs: its job is the runner's),
    their rows are locked in one order, so two such starts between the same machines the
    other way round wait for each other rather than deadlock."""
    with transaction.atomic():
        locked = Machine.objects.select_for_update().filter(pk__in=machine_ids).order_by("pk")
        list(locked.values_list("pk", flat=True))
        yield


def backup_in_flight(*, machine_id, now: datetime) -> Job | None:
    """A backup of the machine that may reuse its unreferenced packs, if any: one not yet
    finished, or one that started and ended Failed or Cancelled within the grace period
    (the portal fails a job whose agent went quiet, but that agent may still be running,
    and the next run resumes from the packs it left)."""
    recent = now - timedelta(hours=settings.HAVEN_GC_GRACE_HOURS)
    return (
        Job.objects.filter(machine_id=machine_id, operation=Job.Operation.BACKUP)
        .filter(
            Q(status__in=Job.ACTIVE)
            | Q(
                status__in=(Job.Status.FAILED, Job.Status.CANCELLED),
                started_at__isnull=False,
                ended_at__gt=recent,
            )
        )
        .order_by("-created_at")
        .first()
    )


def keeps_last_point(machine) -> bool:
    """Does retention keep ``machine``'s latest recovery point whatever its age, with no
    expiry at all? Yes for a machine that is gone (unregistered, or replaced by a new
    registration): no backup will ever come after that point, so it is the last copy of the
    machine's data, and the reference keeps an unavailable machine's last point for good.

    (Every machine's newest point is kept while it is the newest — ``retention.expired`` —
    but a protected machine's expires once newer ones exist; this rule takes the expiry
    away, and the portal says so where the points are listed.) Other states that stop new
    backups — protection stopped with data retained — belong here too.
    """
    return machine.unregistered_at is not None


def retention_apply(*, machine, now: datetime | None = None, store=None) -> list[RecoveryPoint]:
    """Re-tag the machine's points under its current policy, remove the expired ones (never
    the latest), delete their manifests, then collect the machine's unreferenced packs.
    The last point of a machine that ``keeps_last_point`` loses its expiry."""
    now = now or timezone.now()
    policy = BackupPolicy.objects.filter(machine=machine).first()
    if policy is not None and not policy.applies_retention:
        return []  # protection stopped keeping every point, or soft deleted: untouched
    spec = policy.spec() if policy else None
    tz = zone(machine.time_zone)
    points = list(RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True))
    last = max(points, key=lambda p: (p.created_at, str(p.pk))) if points else None
    keep_last = keeps_last_point(machine)
    for point in points:
        tags, expires_at = point.retention_tags, point.expires_at
        if spec is not None:
            tagging = retention.tag_point(
                spec,
                tz,
                adhoc=point.kind == RecoveryPoint.Kind.ADHOC,
                tagged_for=point.tagged_for,
                inherited_from=point.inherited_from,
                retain_until=point.retain_until,
            )
            tags, expires_at = list(tagging.tags), tagging.expires_at
        if keep_last and point is last:
            expires_at = None
        if tags != point.retention_tags or expires_at != point.expires_at:
            point.retention_tags = tags
            point.expires_at = expires_at
            point.save(update_fields=["retention_tags", "expires_at"])
    doomed = retention.expired(
        [retention.Point(p.pk, p.created_at, p.expires_at) for p in points], now
    )
    removed = [p for p in points if p.pk in doomed]
    if not removed:
        return []
    store = store if store is not None else repository_store(machine)
    manifests = []
    for point in removed:
        try:
            store.delete(point.manifest_blob)
        except BlobNotFound:
            pass  # already gone, which is what we want
        except StorageError as exc:
            log.warning("could not delete %s: %s", point.manifest_blob, exc)
            continue
        manifests.append(point.manifest_blob)
        RecoveryPoint.objects.filter(pk=point.pk).update(removed_at=now)
    secondary_delete(machine=machine, names=manifests)
    packs_collect(machine=machine, now=now, store=store)
    return removed


def packs_collect(*, machine, now: datetime | None = None, store=None) -> list[str]:
    """Delete the machine's packs that none of its kept recovery points references, once
    older than the grace period, and only while no backup of the machine is in flight
    (module docstring). Returns the deleted blob names."""
    now = now or timezone.now()
    with repository_fence(machine.pk):
        busy = backup_in_flight(machine_id=machine.pk, now=now)
        points = RecoveryPoint.objects.filter(machine=machine)
        last_point = points.order_by("-pk").values_list("pk", flat=True).first() or 0
        referenced: set[str] = set()
        for pack_ids in points.filter(removed_at__isnull=True).values_list("pack_ids", flat=True):
            referenced.update(pack_ids)
    if busy is not None:
        log.info("machine %s: packs not collected, backup job %s is in flight", machine.pk, busy.pk)
        return []
    store = store if store is not None else repository_store(machine)
    grace = now - timedelta(hours=settings.HAVEN_GC_GRACE_HOURS)
    doomed = [
        blob
        for blob in _packs(store)
        if layout.pack_id_of(blob.name) not in referenced and blob.modified <= grace
    ]
    deleted = []
    for blob in doomed:
        with repository_fence(machine.pk):
            busy = backup_in_flight(machine_id=machine.pk, now=now)
            if busy is not None or points.filter(pk__gt=last_point).exists():
                log.info(
                    "machine %s: pack collection stopped, a backup started or made a point",
                    machine.pk,
                )
                break
            try:
                store.delete(blob.name)
            except BlobNotFound:
                pass  # gone already, which is what we want
            except StorageError as exc:
                log.warning("could not delete pack %s: %s", blob.name, exc)
                continue
        deleted.append(blob.name)
    secondary_delete(machine=machine, names=deleted)
    if deleted:
        log.info("machine %s: deleted %d unreferenced packs", machine.pk, len(deleted))
    return deleted


def retention_apply_all(*, now: datetime | None = None) -> int:
    """Daily: apply retention to every machine with recovery points."""
    count = 0
    machine_ids = (
        RecoveryPoint.objects.filter(removed_at__isnull=True)
        .values_list("machine_id", flat=True)
        .distinct()
    )
    for machine in Machine.objects.filter(pk__in=list(machine_ids)).select_related("vault"):
        try:
            count += len(retention_apply(machine=machine, now=now))
        except Exception:
            log.exception("retention failed for machine %s", machine.pk)
    return count


def vault_history_delete(*, vault) -> int:
    """Remove a vault's history (its jobs, recovery points and alerts) as the vault itself is
    deleted: ``vaults.services.vault_delete`` calls it, on purpose, only once nothing in the
    vault is protected any more. The foreign keys PROTECT these rows, so nothing else (an
    unregistered machine, a rolled-back registration) removes them by cascade. Returns the
    number of rows deleted."""
    count = 0
    for model in (Alert, RecoveryPoint, Job):
        deleted, _ = model.objects.filter(vault=vault).delete()
        count += deleted
    return count
