"""Pruning a machine's repository: apply retention (re-tag the recovery points under the
current policy, remove the expired ones and their manifests) and collect the packs no kept
point references. The portal does this with the storage account key; the agent never
deletes. Blob names are the engine's (``agents.runtime.engine.layout``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from agents.models import Machine
from agents.runtime.blobstore import BlobNotFound, StorageError
from agents.runtime.engine import layout
from jobs import retention
from jobs.models import BackupPolicy, RecoveryPoint
from jobs.schedule import zone
from vaults import storage

log = logging.getLogger(__name__)


def _repository_store(machine):
    """The machine's repository: each machine keeps it in a container of its own
    (``Machine.container``), opened here with the account key, which may delete."""
    return storage.primary_account().store(machine.container)


def retention_apply(*, machine, now: datetime | None = None, store=None) -> list[RecoveryPoint]:
    """Re-tag the machine's points under its current policy, remove the expired ones (never
    the latest), delete their manifests, then collect the machine's unreferenced packs."""
    now = now or timezone.now()
    policy = BackupPolicy.objects.filter(machine=machine).first()
    spec = policy.spec() if policy else None
    tz = zone(machine.time_zone)
    points = list(RecoveryPoint.objects.filter(machine=machine, removed_at__isnull=True))
    for point in points:
        if spec is None:
            continue
        tagging = retention.tag_point(
            spec,
            tz,
            adhoc=point.kind == RecoveryPoint.Kind.ADHOC,
            tagged_for=point.tagged_for,
            inherited_from=point.inherited_from,
            retain_until=point.retain_until,
        )
        if list(tagging.tags) != point.retention_tags or tagging.expires_at != point.expires_at:
            point.retention_tags = list(tagging.tags)
            point.expires_at = tagging.expires_at
            point.save(update_fields=["retention_tags", "expires_at"])
    doomed = retention.expired(
        [retention.Point(p.pk, p.created_at, p.expires_at) for p in points], now
    )
    removed = [p for p in points if p.pk in doomed]
    if not removed:
        return []
    store = store if store is not None else _repository_store(machine)
    for point in removed:
        try:
            store.delete(point.manifest_blob)
        except BlobNotFound:
            pass  # already gone, which is what we want
        except StorageError as exc:
            log.warning("could not delete %s: %s", point.manifest_blob, exc)
            continue
        RecoveryPoint.objects.filter(pk=point.pk).update(removed_at=now)
    packs_collect(machine=machine, now=now, store=store)
    return removed


def packs_collect(*, machine, now: datetime | None = None, store=None) -> list[str]:
    """Delete the machine's packs that none of its kept recovery points references, once
    older than the grace period."""
    now = now or timezone.now()
    store = store if store is not None else _repository_store(machine)
    referenced: set[str] = set()
    for pack_ids in RecoveryPoint.objects.filter(
        machine=machine, removed_at__isnull=True
    ).values_list("pack_ids", flat=True):
        referenced.update(pack_ids)
    grace = now - timedelta(hours=settings.HAVEN_GC_GRACE_HOURS)
    deleted = []
    for blob in list(store.list(layout.DATA_PREFIX)):
        pack_id = layout.pack_id_of(blob.name)
        if pack_id in referenced or blob.modified > grace:
            continue
        try:
            store.delete(blob.name)
        except StorageError as exc:
            log.warning("could not delete pack %s: %s", blob.name, exc)
            continue
        deleted.append(blob.name)
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
