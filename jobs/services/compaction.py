"""Compaction: the portal's half of a Compact job (docs/storage-format.md, "Garbage
collection"; the agent's half is ``agents.runtime.engine.compact``).

Pack collection (``pruning.packs_collect``) deletes only packs no kept recovery point
references; the chunks a pack holds for expired points alone stay as long as one live chunk
does. A Compact job asks the machine's agent, which can decrypt, to copy the live chunk
objects of such packs (and of small packs) into new packs. Its result names every object of
every pack it rewrote and where each live one went. The portal trusts none of it blindly
(``compaction_apply``), and deletes nothing until (``jobs.compaction_check``):

* the report's shape is sound, every new pack it names is stored with the size it says and
  is not one of the packs it replaces;
* each old pack is stored with the size it says, and the objects listed cover its chunk area
  exactly: as many as its sealed header's length says it holds, back to back from offset 0
  to the header (the portal reads the pack's trailer);
* every object the report says it moved is the same bytes in the new pack (the portal reads
  both: a chunk object is sealed with its chunk id, not its pack's, so a copy is verbatim).

Anything else refuses the whole report: nothing is changed or deleted, the job fails with
the reason. Then, under the machine's fence (``pruning.repository_fence``), the references
change: each kept point recorded before the job started that names an old pack names,
instead, the new packs its objects went to (points recorded since, by a backup that ran
meanwhile, keep theirs). Last, still under the fence and only while no backup is in
flight, each old pack that such a point referenced and that no kept point references any
more is deleted; one still referenced (a point recorded since names it) stays, and the next
run deals with it.

What the portal cannot check is which chunks are dead: it cannot read the manifests. A
machine's report that calls a live object dead removes that object; the checks above bound
what a lying report can do to the objects it names in packs of its own repository, and a
report that claims copies it did not make deletes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from agents.models import Machine
from agents.runtime import protocol
from agents.runtime.blobstore import BlobNotFound, StorageError
from agents.runtime.engine import layout
from agents.runtime.protocol import CompactReport
from jobs import services  # the package, for its seams
from jobs.compaction_check import (  # noqa: F401  (re-exported through jobs.services)
    CompactionRefused,
    CompactionUnverifiable,
    compaction_check,
)
from jobs.models import BackupPolicy, Job, RecoveryPoint
from jobs.services.live import job_publish
from jobs.services.pruning import backup_in_flight, repository_fence, repository_store
from jobs.services.replication import secondary_delete
from jobs.services.verify import (
    stored_data_job_create,
    stored_data_job_refusal,
    stored_data_job_running,
    stored_data_refusal,
)

log = logging.getLogger(__name__)

POINTS_BEFORE = "points_before"  # a compact job's details: the last point when it started


class CompactAlreadyRunning(Exception):
    def __init__(self, job: Job):
        super().__init__(f"A compaction of {job.machine} is already running.")
        self.job = job


class CompactRefused(Exception):
    """Compact now cannot start on this machine (``compact_refusal`` says why)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def compact_refusal(machine) -> str:
    """Why Compact now cannot start on ``machine`` ("" when it can): the rule Verify now
    follows (``stored_data_refusal``), or a compaction already on its way (pressing it then
    shows that job)."""
    return stored_data_job_refusal(
        machine, operation=Job.Operation.COMPACT, work="compact", noun="A compaction"
    )


@dataclass
class CompactionOutcome:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # old packs still referenced, or fenced
    bytes_deleted: int = 0
    points_updated: int = 0
    message: str = ""


def _packs(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def compact_start(
    *, machine, user=None, trigger: str = Job.Trigger.ADHOC, now: datetime | None = None
) -> Job:
    """Queue a Compact job for ``machine`` and send it to its agent; one at a time
    (``CompactAlreadyRunning``: looked for and made under the machine's fence, so two
    presses at once, or a press and the daily run, queue one), and only on stored data
    (``CompactRefused``)."""
    now = now or timezone.now()
    refusal = stored_data_refusal(machine, work="compact")
    if refusal:
        raise CompactRefused(refusal)
    with repository_fence(machine.pk):
        running = stored_data_job_running(machine, Job.Operation.COMPACT)
        if running is not None:
            raise CompactAlreadyRunning(running)
        job = stored_data_job_create(
            machine,
            Job.Operation.COMPACT,
            now=now,
            trigger=trigger,
            created_by=user,
            details={
                protocol.COMPACT_THRESHOLD: settings.HAVEN_COMPACT_THRESHOLD_PERCENT / 100,
            },
        )
    services._send_to_machine(machine, protocol.COMPACT_TASK, job_id=str(job.pk))
    job_publish(job)
    return job


def compact_mark_started(job: Job) -> None:
    """At the job's start, under the machine's fence: the last point recorded so far. Only
    points up to it have their references moved (``compaction_apply``); the agent lists the
    manifests after this, so it has seen each of theirs."""
    last = (
        RecoveryPoint.objects.filter(machine_id=job.machine_id)
        .order_by("-pk")
        .values_list("pk", flat=True)
        .first()
    )
    job.details = {**(job.details or {}), POINTS_BEFORE: last or 0}
    job.save(update_fields=["details"])


def compact_all(*, now: datetime | None = None) -> int:
    """After the daily retention: a Compact job for every enrolled, online machine with
    recovery points whose retention runs, and none running (an offline machine's job would
    only wait and fail; tomorrow's run finds it online)."""
    now = now or timezone.now()
    machine_ids = (
        RecoveryPoint.objects.filter(removed_at__isnull=True)
        .values_list("machine_id", flat=True)
        .distinct()
    )
    count = 0
    machines = Machine.objects.filter(pk__in=list(machine_ids), unregistered_at__isnull=True)
    for machine in machines.select_related("vault"):
        policy = BackupPolicy.objects.filter(machine=machine).first()
        if not machine.is_online(now) or (policy is not None and not policy.applies_retention):
            continue
        try:
            compact_start(machine=machine, trigger=Job.Trigger.SCHEDULED, now=now)
        except CompactAlreadyRunning:
            continue
        count += 1
    return count


def compaction_apply(
    *, job: Job, report: CompactReport, now: datetime | None = None, store=None
) -> CompactionOutcome:
    """Check the agent's report, move the references, delete the old packs (module
    docstring). Raises ``CompactionRefused`` (nothing changed) or ``CompactionUnverifiable``."""
    now = now or timezone.now()
    machine = job.machine
    store = store if store is not None else repository_store(machine)
    compaction_check(report=report, store=store)
    outcome = CompactionOutcome()
    if not report.packs:
        outcome.message = "No pack needed compacting."
        return outcome
    last_point = int((job.details or {}).get(POINTS_BEFORE) or 0)
    dest: dict[str, set[str]] = {}
    for old in report.packs:
        dest[old.pack] = {report.new_packs[obj[2]][0] for obj in old.objects if len(obj) == 4}
    swapped: set[str] = set()
    with repository_fence(machine.pk):
        points = RecoveryPoint.objects.filter(
            machine=machine, removed_at__isnull=True, pk__lte=last_point
        )
        for point in points.select_for_update():
            named = [p for p in point.pack_ids if p in dest]
            if not named:
                continue
            kept = [p for p in point.pack_ids if p not in dest]
            added = sorted(set().union(*(dest[p] for p in named)) - set(kept))
            point.pack_ids = kept + added
            point.save(update_fields=["pack_ids"])
            swapped.update(named)
            outcome.points_updated += 1
    sizes = {old.pack: old.size for old in report.packs}
    with repository_fence(machine.pk):
        busy = backup_in_flight(machine_id=machine.pk, now=now)
        referenced: set[str] = set()
        for ids in RecoveryPoint.objects.filter(
            machine=machine, removed_at__isnull=True
        ).values_list("pack_ids", flat=True):
            referenced.update(ids)
        for pack in sorted(dest):
            if pack not in swapped and pack not in referenced:
                continue  # no point of this job's time named it: pack collection's to delete
            if busy is not None or pack in referenced:
                outcome.kept.append(pack)
                continue
            try:
                store.delete(layout.pack_blob(pack))
            except BlobNotFound:
                pass  # gone already, which is what we want
            except StorageError as exc:
                log.warning("could not delete pack %s: %s", pack, exc)
                outcome.kept.append(pack)
                continue
            outcome.deleted.append(layout.pack_blob(pack))
            outcome.bytes_deleted += sizes[pack]
    secondary_delete(machine=machine, names=outcome.deleted)
    outcome.message = (
        f"The portal checked the report and deleted {_packs(len(outcome.deleted), 'old pack')} "
        f"({outcome.bytes_deleted:,} bytes)."
    )
    if outcome.kept:
        why = (
            "a backup was running"
            if busy is not None
            else "a recovery point recorded meanwhile still uses them"
        )
        outcome.message += (
            f" {_packs(len(outcome.kept), 'old pack')} kept because {why}; pack collection "
            "or the next compaction removes them."
        )
    log.info(
        "machine %s: compaction deleted %d packs, kept %d",
        machine.pk,
        len(outcome.deleted),
        len(outcome.kept),
    )
    return outcome
