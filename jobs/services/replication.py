"""Geo-redundant storage: the portal's worker copies every machine container of a
geo-redundant vault to the secondary store (``vaults.storage.secondary_account()``).

A pass over one container lists both sides and copies what the secondary lacks. Blobs are
write-once, so the secondary's own listing is the marker of what is copied: a pass that
stops half way (worker restarted, secondary away) resumes with the next one, and a blob is
never copied twice. Two passes over one container never overlap: each holds the
container's lease (``ReplicaState.lease_until``, taken by a conditional UPDATE, renewed as
it goes). Each copy is read back from the secondary and its SHA-256 compared with the
original's. Copies go in the engine's write order — packs, then index, keys and config,
manifests last — and a pass stops at its first failure, so a recovery point whose manifest
is on the secondary has all its packs there too (``point_replicated``).

A pass with something to copy is a visible Replicate job (vault › Backup Jobs) with
progress; a pass that finds nothing to copy only updates the lag. The lag (the age of the
oldest blob not yet copied) is kept per container for the vault's overview and raises a
Warning alert (``Alert.Kind.REPLICATION_LAG``) above ``HAVEN_REPLICATION_LAG_ALERT_MINUTES``.
Deletions (retention, pack collection) happen on both sides
(``vaults.storage.replicas.delete_blobs_everywhere``); what the secondary could not delete
is kept in ``ReplicaState.pending_deletes`` and retried by the next pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.models import Machine
from agents.runtime.blobstore import BlobExists, BlobInfo, BlobNotFound, StorageError
from agents.runtime.engine import layout
from jobs.models import Alert, Job, RecoveryPoint, ReplicaState
from jobs.services.alerts import alert_raise, alerts_resolve
from jobs.services.live import job_notify_finished, job_publish
from vaults import storage
from vaults.models import Vault
from vaults.storage.replicas import delete_blobs_everywhere, delete_on_secondary, secondary_for

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
PROGRESS_EVERY = 1.0  # seconds between progress saves
PHASE = "replicating"


class ReplicaMismatch(StorageError):
    """A blob on the secondary differs from the primary's: it is never overwritten."""


def _order(blob: BlobInfo) -> tuple[int, str]:
    """The engine's write order: packs, then index, keys and config, manifests last."""
    name = blob.name
    if name.startswith(layout.DATA_PREFIX):
        rank = 0
    elif name.startswith(layout.SNAPSHOTS_PREFIX):
        rank = 2
    else:
        rank = 1
    return rank, name


# -- the lease --------------------------------------------------------------------------------
def _state_for(machine: Machine) -> ReplicaState:
    try:
        with transaction.atomic():
            state, _ = ReplicaState.objects.get_or_create(
                machine=machine, defaults={"vault_id": machine.vault_id}
            )
    except IntegrityError:  # another worker made it first
        state = ReplicaState.objects.get(machine=machine)
    return state


def _take_lease(state: ReplicaState, now: datetime) -> bool:
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    return bool(
        ReplicaState.objects.filter(free, pk=state.pk).update(lease_until=timezone.now() + LEASE)
    )


def _renew_lease(state: ReplicaState) -> None:
    ReplicaState.objects.filter(pk=state.pk).update(lease_until=timezone.now() + LEASE)


def _release_lease(state: ReplicaState) -> None:
    ReplicaState.objects.filter(pk=state.pk).update(lease_until=None)


# -- one pass ---------------------------------------------------------------------------------
def replicate_machine(*, machine: Machine, now: datetime | None = None) -> Job | None:
    """One pass over ``machine``'s container; returns the Replicate job when there was
    something to copy (None when the vault is not replicated, another pass holds the
    container, or the secondary already held everything)."""
    vault = machine.vault
    secondary = secondary_for(vault)
    if secondary is None or not machine.container:
        return None
    now = now or timezone.now()
    state = _state_for(machine)
    if not _take_lease(state, now):
        return None
    job = None
    try:
        job = _pass(machine=machine, vault=vault, secondary=secondary, state=state, now=now)
    finally:
        _release_lease(state)
    state.refresh_from_db()
    _lag_alert(machine=machine, state=state, now=timezone.now())
    return job


def _secondary_seen(vault: Vault, error: str) -> None:
    Vault.objects.filter(pk=vault.pk).update(
        secondary_checked_at=timezone.now(), secondary_error=error[:2000]
    )


def _pass(*, machine, vault, secondary, state, now) -> Job | None:
    container = machine.container
    primary_store = storage.primary_account().store(container)
    try:
        try:
            listed = list(primary_store.list())
        except StorageError as exc:
            ReplicaState.objects.filter(pk=state.pk).update(
                checked_at=now, error=f"The primary storage could not be listed: {exc}"
            )
            return None
        try:
            secondary.ping()  # one quick try: an unreachable secondary is said at once
            secondary.create_container(container)
            secondary_store = secondary.store(container)
            present = {blob.name: blob.size for blob in secondary_store.list()}
        except StorageError as exc:
            _secondary_seen(vault, str(exc))
            _behind(state, listed, error=f"The secondary storage is unavailable: {exc}", now=now)
            return None
        _secondary_seen(vault, "")
        try:
            _retry_deletes(state, secondary_store)
            missing = sorted((b for b in listed if b.name not in present), key=_order)
            differing = [b.name for b in listed if b.name in present and present[b.name] != b.size]
            if differing:
                # Something other than this worker wrote there: stop and say so; a
                # person must look before anything more is copied.
                _behind(
                    state,
                    listed,
                    error=(
                        f"{len(differing)} blob(s) on the secondary differ in size from the "
                        f"primary's (first: {differing[0]}); they are never overwritten, and "
                        "nothing more is copied until they are looked at"
                    ),
                    now=now,
                )
                return None
            if not missing:
                ReplicaState.objects.filter(pk=state.pk).update(
                    checked_at=now,
                    synced_through=now,
                    pending_blobs=0,
                    pending_bytes=0,
                    oldest_pending_at=None,
                    error="",
                )
                return None
            return _copy(
                machine=machine,
                state=state,
                missing=missing,
                source=primary_store,
                target=secondary_store,
                now=now,
            )
        finally:
            secondary_store.close()
    finally:
        primary_store.close()


def _behind(state: ReplicaState, listed: list[BlobInfo], *, error: str, now: datetime) -> None:
    """The secondary could not be read: what the primary received since the last complete
    pass is (at most) what is missing."""
    since = state.synced_through
    unknown = [b for b in listed if since is None or b.modified > since]
    oldest = min((b.modified for b in unknown), default=None)
    if state.oldest_pending_at is not None:
        oldest = min(oldest or state.oldest_pending_at, state.oldest_pending_at)
    ReplicaState.objects.filter(pk=state.pk).update(
        checked_at=now,
        pending_blobs=len(unknown),
        pending_bytes=sum(b.size for b in unknown),
        oldest_pending_at=oldest,
        error=error[:2000],
    )


def _retry_deletes(state: ReplicaState, target) -> None:
    names = list(state.pending_deletes or [])
    if not names:
        return
    left = []
    for name in names:
        try:
            target.delete(name)
        except BlobNotFound:
            pass
        except StorageError:
            left.append(name)
    ReplicaState.objects.filter(pk=state.pk).update(pending_deletes=left)


def _copy(*, machine, state, missing: list[BlobInfo], source, target, now) -> Job:
    total_bytes = sum(b.size for b in missing)
    ReplicaState.objects.filter(pk=state.pk).update(
        checked_at=now,
        pending_blobs=len(missing),
        pending_bytes=total_bytes,
        oldest_pending_at=min(b.modified for b in missing),
        error="",
    )
    job = Job.objects.create(
        vault_id=machine.vault_id,
        machine=machine,
        operation=Job.Operation.REPLICATE,
        trigger=Job.Trigger.SCHEDULED,
        status=Job.Status.RUNNING,
        started_at=now,
        last_report_at=now,
        details={"kind": "replicate", "blobs": len(missing), "bytes": total_bytes},
        progress=_progress(0, len(missing), 0, total_bytes, now, now),
    )
    transaction.on_commit(lambda: job_publish(job))
    done_blobs = done_bytes = 0
    last_save = time.monotonic()
    error = ""
    try:
        for blob in missing:
            copied = _copy_one(blob, source, target)
            done_blobs += 1
            done_bytes += blob.size
            if copied:
                ReplicaState.objects.filter(pk=state.pk).update(
                    copied_blobs=F("copied_blobs") + 1, copied_bytes=F("copied_bytes") + blob.size
                )
            if time.monotonic() - last_save >= PROGRESS_EVERY:
                last_save = time.monotonic()
                _save_progress(job, state, missing, done_blobs, done_bytes, total_bytes, now)
    except StorageError as exc:
        error = f"Replication stopped at a blob it could not copy: {exc}"
        log.warning("machine %s: replication stopped: %s", machine.pk, exc)
    left = missing[done_blobs:]
    finished = timezone.now()
    ReplicaState.objects.filter(pk=state.pk).update(
        checked_at=finished,
        synced_through=now if not left else state.synced_through,
        pending_blobs=len(left),
        pending_bytes=sum(b.size for b in left),
        oldest_pending_at=min((b.modified for b in left), default=None),
        error=error[:2000],
    )
    job.progress = _progress(done_blobs, len(missing), done_bytes, total_bytes, now, finished)
    job.progress["current"] = None
    job.status = Job.Status.FAILED if error else Job.Status.COMPLETED
    job.error = error
    job.bytes_transferred = done_bytes
    job.ended_at = job.last_report_at = finished
    job.save()
    job_notify_finished(job=job)
    job_publish(job)
    return job


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _copy_one(blob: BlobInfo, source, target) -> bool:
    """Copy one blob and check the copy's hash; False when it vanished from the primary
    (deleted by retention since the listing, so it must not live on in the copy)."""
    try:
        data = source.get(blob.name)
    except BlobNotFound:
        return False
    digest = _digest(data)
    try:
        target.put(blob.name, data)
    except BlobExists:
        raise ReplicaMismatch(
            f"{blob.name} already exists on the secondary with other bytes; it is never overwritten"
        ) from None
    if _digest(target.get(blob.name)) != digest:
        raise ReplicaMismatch(f"the copy of {blob.name} on the secondary does not match")
    if not source.exists(blob.name):
        # Deleted on the primary while it was being copied: delete the copy as well.
        with contextlib.suppress(BlobNotFound):
            target.delete(blob.name)
        return False
    return True


def _progress(done, total, done_bytes, total_bytes, started, at) -> dict:
    elapsed = max((at - started).total_seconds(), 0.001)
    rate = done_bytes / elapsed if done_bytes else 0
    return {
        "phase": PHASE,
        "files_done": done,
        "files_total": total,
        "bytes_done": done_bytes,
        "bytes_total": total_bytes,
        "stored_bytes": done_bytes,
        "rate_bps": int(rate),
        "eta_s": int((total_bytes - done_bytes) / rate) if rate else None,
        "elapsed_s": int(elapsed),
    }


def _save_progress(job, state, missing, done_blobs, done_bytes, total_bytes, started) -> None:
    at = timezone.now()
    left = missing[done_blobs:]
    ReplicaState.objects.filter(pk=state.pk).update(
        pending_blobs=len(left),
        pending_bytes=total_bytes - done_bytes,
        oldest_pending_at=min((b.modified for b in left), default=None),
        lease_until=at + LEASE,
    )
    job.progress = _progress(done_blobs, len(missing), done_bytes, total_bytes, started, at)
    job.bytes_transferred = done_bytes
    job.last_report_at = at
    Job.objects.filter(pk=job.pk).update(
        progress=job.progress, bytes_transferred=done_bytes, last_report_at=at
    )
    job_publish(job)


# -- lag --------------------------------------------------------------------------------------
def replication_lag(state: ReplicaState | None, now: datetime | None = None) -> timedelta | None:
    """The age of the oldest blob known not to be on the secondary (None: none known)."""
    if state is None or state.oldest_pending_at is None:
        return None
    return max((now or timezone.now()) - state.oldest_pending_at, timedelta(0))


def _lag_alert(*, machine: Machine, state: ReplicaState, now: datetime) -> None:
    lag = replication_lag(state, now)
    limit = timedelta(minutes=settings.HAVEN_REPLICATION_LAG_ALERT_MINUTES)
    if lag is not None and lag > limit:
        minutes = int(lag.total_seconds() // 60)
        reason = f" ({state.error})" if state.error else ""
        alert_raise(
            vault=machine.vault,
            machine=machine,
            kind=Alert.Kind.REPLICATION_LAG,
            severity=Alert.Severity.WARNING,
            message=(
                f"The backups of {machine.name} are {minutes} minutes behind on the secondary "
                f"storage: {state.pending_blobs} blob(s) not yet copied{reason}."
            ),
            now=now,
        )
    elif lag is None:
        alerts_resolve(machine=machine, kinds=[Alert.Kind.REPLICATION_LAG], now=now)


# -- every container --------------------------------------------------------------------------
def replicated_machines():
    """Every machine with a container in a replicated vault, unregistered ones included:
    their backups stay sources for Recover Data."""
    return (
        Machine.objects.select_related("vault")
        .filter(vault__redundancy=Vault.Redundancy.GEO, vault__state=Vault.State.READY)
        .exclude(vault__secondary_container="")
        .exclude(container="")
    )


def replicate_all(*, now: datetime | None = None) -> int:
    """Every ``HAVEN_REPLICATION_INTERVAL_SECONDS``: one pass over each replicated container;
    returns the number of Replicate jobs. A Replicate job left running by a worker that
    died (its lease ran out) is failed first."""
    now = now or timezone.now()
    replication_abandoned_fail(now=now)
    if storage.secondary_account() is None:
        return 0
    jobs = 0
    for machine in replicated_machines():
        try:
            if replicate_machine(machine=machine) is not None:  # its own "now": passes take time
                jobs += 1
        except Exception:  # one container's trouble must not stop the others
            log.exception("replication failed for machine %s", machine.pk)
    return jobs


def replication_abandoned_fail(*, now: datetime) -> int:
    stale = now - LEASE
    count = 0
    for job in Job.objects.filter(
        operation=Job.Operation.REPLICATE, status=Job.Status.RUNNING, last_report_at__lt=stale
    ).select_related("machine", "vault"):
        if Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
            status=Job.Status.FAILED,
            ended_at=now,
            error=(
                "The portal's worker stopped during this replication (it was restarted or "
                "lost). Nothing copied is lost: the next pass copies what is left."
            ),
        ):
            job.refresh_from_db()
            job_notify_finished(job=job)
            job_publish(job)
            count += 1
    return count


# -- what is on the secondary -----------------------------------------------------------------
def secondary_delete_owed(*, machine: Machine, names: list[str]) -> None:
    """Remember blobs the secondary could not delete: the next pass deletes them."""
    if not names:
        return
    with transaction.atomic():
        state = _state_for(machine)
        state = ReplicaState.objects.select_for_update().get(pk=state.pk)
        state.pending_deletes = sorted(set(state.pending_deletes or []) | set(names))
        state.save(update_fields=["pending_deletes"])


def secondary_delete(*, machine: Machine, names: list[str]) -> None:
    """Delete on the secondary what was just deleted on the primary (replicated vaults);
    what it could not delete is retried by the next pass."""
    failed = delete_on_secondary(vault=machine.vault, container=machine.container, names=names)
    secondary_delete_owed(machine=machine, names=list(failed))


def delete_on_both_sides(*, machine: Machine, names: list[str]) -> list[str]:
    """Delete a machine's blobs on the primary and (replicated vault) the secondary;
    returns the names deleted on the primary. What the secondary owes is retried later."""
    result = delete_blobs_everywhere(vault=machine.vault, container=machine.container, names=names)
    secondary_delete_owed(machine=machine, names=list(result.secondary_failed))
    return result.primary


def replicated_manifests(machine: Machine) -> set[str]:
    """The manifests (``snapshots/…``) on the secondary: their points are restorable from
    there (module docstring). Raises ``StorageError`` when the secondary cannot be listed."""
    secondary = secondary_for(machine.vault)
    if secondary is None or not machine.container:
        return set()
    with secondary.store(machine.container) as store:
        try:
            return {blob.name for blob in store.list(layout.SNAPSHOTS_PREFIX)}
        except BlobNotFound:
            return set()


def point_replicated(point: RecoveryPoint) -> bool:
    """Whether ``point`` can be restored from the secondary (raises ``StorageError``)."""
    secondary = secondary_for(point.vault)
    if secondary is None:
        return False
    with secondary.store(point.machine.container) as store:
        return store.exists(point.manifest_blob)
