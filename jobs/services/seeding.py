"""Offline seeding: importing a seed (a machine's first backup written to a disk by
``haven-agent seed export``) into the machine's container, as an Import job.

The import reads the seed header (``agents.runtime.seed``), refuses a seed of another
vault, machine or repository with a message saying whose it is, and then copies every blob
the container lacks, checking each one's SHA-256 against the header first. It can stop at
any moment and start again: blobs are create-only, so what is in the container is complete
and the next run copies only what is still missing. Packs go first, then index deltas, then
the manifest, as a backup writes them; the recovery point is recorded last, through the same
``point_check`` as a backup's. One run copies at a time: a run started later (Import pressed
again, after a worker died or while one still copies, or the task delivered again) takes the
import over, and the earlier one stops after the blob it is copying, at its next look at the
job (about once a second), raising ``ImportTakenOver``; nor does it fail the job after that.

A path typed in the portal is a path on the portal's host: it must lie inside
``HAVEN_SEED_IMPORT_ROOT`` with no ``..`` and no symbolic link on the way, and the files of
the seed are opened without following links.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from agents.runtime import seed as wire
from agents.runtime.blobstore import StorageError
from agents.runtime.engine import layout
from jobs.models import Job
from jobs.services import points
from jobs.services.jobs import job_finish, job_record_progress
from jobs.services.live import job_publish
from jobs.services.pruning import repository_fence, repository_store
from jobs.services.verify import stored_data_job_running

log = logging.getLogger(__name__)

_HEX32 = frozenset("0123456789abcdef")
# The order a backup writes in (docs/storage-format.md, "Crash consistency").
_ORDER = (layout.DATA_PREFIX, layout.INDEX_PREFIX, layout.SNAPSHOTS_PREFIX)


class SeedRefused(Exception):
    """A seed that is not imported; the message says why, for a person."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ImportTakenOver(Exception):
    """This run of an import stopped: a later run carries it on (the same job)."""


RUN_KEY = "run"  # the job's details: the name of the run that copies (``_take_over``)


# -- where the seed is --------------------------------------------------------------------
def import_root() -> Path | None:
    root = settings.HAVEN_SEED_IMPORT_ROOT
    return Path(root) if root else None


def seed_path_resolve(raw: str, *, root: Path | None = None) -> Path:
    """The seed folder a person typed (relative to the import root, or absolute inside it),
    refused unless it is a folder inside the root reached without ``..`` or a link."""
    root = root if root is not None else import_root()
    if root is None:
        raise SeedRefused(
            "Importing from the portal is not enabled: the operator sets HAVEN_SEED_IMPORT_ROOT "
            "to the folder where seed disks are mounted (or runs manage.py seed_import PATH)."
        )
    raw = (raw or "").strip()
    if not raw or "\x00" in raw:
        raise SeedRefused("Enter the seed folder's path.")
    root = Path(os.path.realpath(root))
    given = Path(raw)
    relative = (
        given.relative_to(root) if given.is_absolute() and given.is_relative_to(root) else given
    )
    if relative.is_absolute():
        raise SeedRefused(f"The seed folder must be inside {root}.")
    if any(part in ("..", ".") for part in Path(raw).parts) or any(
        part == ".." for part in relative.parts
    ):
        raise SeedRefused("The path may not contain '..'.")
    here = root
    for part in relative.parts:
        here = here / part
        if here.is_symlink():
            raise SeedRefused(f"{here} is a symbolic link; give the folder it points to.")
    if not here.is_dir():
        raise SeedRefused(f"{here} is not a folder on the portal's host.")
    return here


def _open_in(folder: Path, name: str) -> int:
    """An fd for ``folder/name``, each component opened without following a link."""
    parts = name.split("/")
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def _read_in(folder: Path, name: str, *, limit: int = wire.MAX_BLOB_BYTES) -> bytes:
    fd = _open_in(folder, name)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SeedRefused(f"{name} on the seed disk is larger than any blob can be.")
    return data


# -- the header ---------------------------------------------------------------------------
def seed_header_read(folder: Path) -> dict:
    """The seed header of ``folder``, its fields checked; ``SeedRefused`` otherwise."""
    try:
        header = json.loads(_read_in(folder, wire.SEED_HEADER))
    except FileNotFoundError:
        raise SeedRefused(
            f"{folder} holds no {wire.SEED_HEADER}: is it the folder haven-agent seed export "
            "wrote to?"
        ) from None
    except (OSError, ValueError) as exc:
        raise SeedRefused(f"The seed header cannot be read: {exc}") from None
    try:
        if header["format"] != wire.SEED_FORMAT or header["version"] != wire.SEED_VERSION:
            raise SeedRefused("This is not a version 1 Haven seed.")
        point = str(header["recovery_point_id"])
        blobs = [
            {"name": str(b["name"]), "size": int(b["size"]), "sha256": str(b["sha256"])}
            for b in header["blobs"]
        ]
        clean = {
            "vault": {"id": str(header["vault"]["id"]), "name": str(header["vault"]["name"])},
            "machine": {
                "id": str(header["machine"]["id"]),
                "name": str(header["machine"]["name"]),
            },
            "repository_id": str(header["repository_id"]),
            "recovery_point_id": point,
            "packs": [str(p) for p in header["packs"]],
            "stats": {k: int(v) for k, v in dict(header.get("stats") or {}).items()},
            "created_at": str(header.get("created_at", "")),
            "blobs": blobs,
        }
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SeedRefused("The seed header is incomplete or malformed.") from None
    if len(point) != 32 or not set(point) <= _HEX32:
        raise SeedRefused("The seed header names no valid recovery point.")
    names = {b["name"] for b in blobs}
    bad = sorted(n for n in names if not wire.blob_name_allowed(n))
    if bad:
        raise SeedRefused(f"The seed names a blob that is not the engine's: {bad[0][:100]!r}.")
    big = [b["name"] for b in blobs if not 0 <= b["size"] <= wire.MAX_BLOB_BYTES]
    if big:
        raise SeedRefused(f"The seed names a blob of an impossible size: {big[0]}.")
    if len(names) != len(blobs):
        raise SeedRefused("The seed header names a blob twice.")
    if layout.manifest_blob(point) not in names or layout.CONFIG_BLOB not in names:
        raise SeedRefused("The seed header does not list its recovery point and config.")
    return clean


def seed_owner_check(*, machine, header: dict) -> None:
    """Refuse a seed of another vault or machine, saying whose it is."""
    seed_vault, seed_machine = header["vault"], header["machine"]
    if seed_machine["id"] != str(machine.pk) or seed_vault["id"] != str(machine.vault_id):
        raise SeedRefused(
            f"This seed is the first backup of machine {seed_machine['name']!r} in vault "
            f"{seed_vault['name']!r}, not of {machine.name!r} in vault {machine.vault.name!r}. "
            f"Import it on {seed_machine['name']}'s page."
        )


# -- the job ------------------------------------------------------------------------------
def seed_import_start(*, machine, folder: Path, user=None, enqueue: bool = True) -> Job:
    """Check the seed in ``folder`` and queue its import on the portal's worker (unless
    ``enqueue`` is false: the caller runs it); an unfinished import of the same seed is
    resumed (the same job)."""
    header = seed_header_read(folder)
    seed_owner_check(machine=machine, header=header)
    details = {"path": str(folder), "recovery_point_id": header["recovery_point_id"]}
    # Under the machine's fence: two starts at once find one job (a lock on the job itself
    # would hold nothing while there is none yet).
    with repository_fence(machine.pk):
        job = stored_data_job_running(machine, Job.Operation.IMPORT)
        if job is not None and job.details.get("recovery_point_id") != details["recovery_point_id"]:
            raise SeedRefused("Another seed's import is running for this machine; wait for it.")
        if job is None:
            job = Job.objects.create(
                vault_id=machine.vault_id,
                machine=machine,
                operation=Job.Operation.IMPORT,
                status=Job.Status.QUEUED,
                created_by=user,
                details=details,
            )
        if enqueue:
            from jobs import services  # the package's _enqueue, which tests replace

            services._enqueue("seed_import", str(job.pk))
    job_publish(job)
    return job


def _sorted_for_copy(blobs: list[dict]) -> list[dict]:
    def rank(blob):
        for i, prefix in enumerate(_ORDER):
            if blob["name"].startswith(prefix):
                return (i, blob["name"])
        return (-1, blob["name"])  # config and keys, which are there already

    return sorted(blobs, key=rank)


def seed_import_run(
    *,
    job: Job,
    store=None,
    clock: Callable[[], float] = time.monotonic,
    after_blob: Callable[[str], None] | None = None,
) -> Job:
    """Copy the seed of ``job`` into its machine's container and record its point.
    ``ImportTakenOver`` when a later run took the import over meanwhile.

    ``store`` replaces the machine's container (tests); ``after_blob(name)`` is called after
    each copied blob (tests interrupt there)."""
    if job.status not in Job.ACTIVE:
        return job
    machine = job.machine
    folder = Path(job.details["path"])
    run = _take_over(job)
    try:
        header = seed_header_read(folder)
        seed_owner_check(machine=machine, header=header)
        if header["recovery_point_id"] != job.details.get("recovery_point_id"):
            raise SeedRefused("The seed in this folder changed since the import was started.")
        with contextlib.nullcontext(store) if store else repository_store(machine) as own:
            copied = _copy(job=job, run=run, header=header, folder=folder, own=own, clock=clock,
                           after_blob=after_blob)  # fmt: skip
            if copied is None:
                return job  # cancelled
            stats = dict(header["stats"])
            stats["added_bytes"] = stats.get("added_bytes") or stats.get("stored_bytes") or 0
            job.refresh_from_db()
            return job_finish(
                job=job,
                status=Job.Status.COMPLETED,
                stats={**stats, "stored_bytes": copied},
                snapshot_id=header["recovery_point_id"],
                manifest_blob=layout.manifest_blob(header["recovery_point_id"]),
                pack_ids=header["packs"],
            )
    except SeedRefused as exc:
        return _fail(job, run, exc.message)
    except points.PointRefused:
        job.refresh_from_db()  # job_finish saved it Failed, with the reason
        return job
    except StorageError as exc:
        return _fail(
            job,
            run,
            f"The machine's storage failed during the import: {exc}. Import again: what was "
            "copied stays, and only the rest is copied.",
        )


def _take_over(job: Job) -> str:
    """Name this run the import's only one and return its name."""
    run = uuid.uuid4().hex
    with repository_fence(job.machine_id):
        job.refresh_from_db(fields=["details"])
        job.details = {**job.details, RUN_KEY: run}
        Job.objects.filter(pk=job.pk).update(details=job.details)
    return run


def _still_ours(job: Job, run: str, *fields: str) -> None:
    """``ImportTakenOver`` unless ``run`` is still the one named in the job (read again,
    with ``fields``)."""
    job.refresh_from_db(fields=["details", *fields])
    if job.details.get(RUN_KEY) != run:
        log.info("seed import %s: a later run took it over; this one stops", job.pk)
        raise ImportTakenOver(f"The import of job {job.pk} is carried on by a later run.")


def _fail(job: Job, run: str, reason: str) -> Job:
    """Fail the job, unless a later run took it over (its own outcome stands)."""
    from jobs.services.jobs import job_fail

    _still_ours(job, run)
    log.warning("seed import %s failed: %s", job.pk, reason)
    return job_fail(job=job, reason=reason)


def _copy(*, job, run, header, folder, own, clock, after_blob) -> int | None:
    """Check and copy the missing blobs; returns the bytes copied (None: cancelled).
    ``ImportTakenOver`` when a later run took the import over."""
    present = {b.name: b.size for b in own.list("")}
    if layout.CONFIG_BLOB not in present:
        raise SeedRefused("This machine's storage has no repository; register it again.")
    config = next(b for b in header["blobs"] if b["name"] == layout.CONFIG_BLOB)
    if hashlib.sha256(own.get(layout.CONFIG_BLOB)).hexdigest() != config["sha256"]:
        raise SeedRefused(
            f"This seed was written for another repository (id {header['repository_id']}) "
            f"than the one in {job.machine.name}'s storage; was the machine registered again "
            "after the export? Export the seed again."
        )
    blobs = _sorted_for_copy(header["blobs"])
    total_bytes = sum(b["size"] for b in blobs)
    done_bytes = copied = 0
    started = clock()
    last = None
    for i, blob in enumerate(blobs):
        name = blob["name"]
        if name not in present:
            if name.startswith(layout.KEYS_PREFIX):
                raise SeedRefused(
                    f"The seed holds a key ({name}) this machine's storage does not: it was "
                    "written for another repository. Export the seed again."
                )
            try:
                data = _read_in(folder, name)
            except OSError as exc:
                raise SeedRefused(f"{name} cannot be read from the seed: {exc}") from None
            if len(data) != blob["size"] or hashlib.sha256(data).hexdigest() != blob["sha256"]:
                raise SeedRefused(
                    f"{name} on the seed disk does not match its hash in the header: the disk "
                    "is damaged. Nothing of it was copied; export the seed again."
                )
            own.put(name, data)
            copied += len(data)
            if after_blob is not None:
                after_blob(name)
        done_bytes += blob["size"]
        now = clock()
        if last is None or now - last >= 1.0 or i == len(blobs) - 1:
            last = now
            elapsed = max(now - started, 1e-6)
            # A cancel from the job's page lands on the row, not on this object; so does
            # the name of a later run that took the import over.
            _still_ours(job, run, "status", "cancel_requested_at")
            stop = job_record_progress(
                job=job,
                event={
                    "phase": "import",
                    "files_done": i + 1,
                    "files_total": len(blobs),
                    "bytes_done": done_bytes,
                    "bytes_total": total_bytes,
                    "new_bytes": copied,
                    "stored_bytes": copied,
                    "rate_bps": copied / elapsed,
                    "eta_s": None,
                    "current": name,
                    "elapsed_s": elapsed,
                },
            )
            if stop:
                _cancelled(job)
                return None
    return copied


def _cancelled(job: Job) -> None:
    from jobs.services.jobs import _save_final

    job.refresh_from_db()
    if job.status in Job.ACTIVE:
        _save_final(
            job,
            status=Job.Status.CANCELLED,
            error="Cancelled on request; what was copied stays, and an import again copies "
            "only the rest.",
            warnings=[],
            warning_count=0,
            stats={},
            now=timezone.now(),
        )
        job_publish(job)
