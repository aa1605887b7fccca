"""Offline seeding: the first backup written to a disk instead of the network.

``seed_export`` copies the machine's ``config`` and ``keys/`` blobs (a few hundred bytes)
from its container into a staging folder, backs up into that folder with the engine (the
same repository: same id, same keys, so the packs deduplicate later), and writes the seed
header ``haven-seed.json`` naming the vault, the machine, the repository, the recovery
point and every blob with its size and SHA-256. The portal's import
(``jobs/services/seeding.py``) checks those names and hashes and copies what is missing into
the machine's container. The header's wire names are defined here, once.

No Django here: the portal imports the constants and ``blob_name_allowed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from agents.runtime.blobstore.base import BlobNotFound, BlobStore
from agents.runtime.blobstore.local import RESERVED, LocalDirectoryStore
from agents.runtime.engine import layout
from agents.runtime.sizes import size_text

SEED_HEADER = "haven-seed.json"
SEED_FORMAT = "haven-seed"
SEED_VERSION = 1

# The only names a seed may carry: the engine's (docs/storage-format.md, "Blobs").
_BLOB_NAME = re.compile(
    r"config|keys/[0-9a-f]{16}|data/([0-9a-f]{2})/\1[0-9a-f]{30}|index/[0-9a-f]{32}"
    r"|snapshots/[0-9a-f]{32}"
)
_HASH_CHUNK = 1 << 20
# No engine blob comes near this (packs are 16 MiB plus at most one chunk); the import reads
# a blob whole before it checks and stores it, so a larger one is refused.
MAX_BLOB_BYTES = 64 << 20


class SeedError(Exception):
    """A seed cannot be written; the message says what to do."""


class ForeignSeed(SeedError):
    """The staging folder holds the seed of another repository."""


class StagingTooSmall(SeedError):
    """The staging folder's disk has too little free space for the data to back up."""


def blob_name_allowed(name: str) -> bool:
    return bool(_BLOB_NAME.fullmatch(name))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_repository_identity(source: BlobStore, staging: BlobStore) -> str:
    """Copy ``config`` and every ``keys/`` blob of ``source`` that ``staging`` lacks;
    returns the repository id. A staging folder of another repository is refused."""
    try:
        config = source.get(layout.CONFIG_BLOB)
    except BlobNotFound:
        raise SeedError(
            "this machine's storage has no repository yet; register the machine again"
        ) from None
    repo_id = json.loads(config)["id"]
    if staging.exists(layout.CONFIG_BLOB):
        theirs = json.loads(staging.get(layout.CONFIG_BLOB)).get("id")
        if theirs != repo_id:
            raise ForeignSeed(
                "the staging folder holds another repository's seed; choose an empty folder"
            )
    else:
        staging.put(layout.CONFIG_BLOB, config)
    for blob in source.list(layout.KEYS_PREFIX):
        if not staging.exists(blob.name):
            staging.put(blob.name, source.get(blob.name))
    return repo_id


def staging_check(folder: Path) -> int:
    """Before the portal's offline backup writes to ``folder``: it must exist (the disk is
    mounted: a missing folder is not created, so a seed never lands on the machine's own
    disk by mistake), be a writable folder, and hold nothing but a seed (of any repository:
    ``copy_repository_identity`` refuses another's). Returns the bytes of packs it already
    holds (a seed written earlier, which the backup reuses)."""
    if not folder.is_absolute():
        raise SeedError(f"the seed staging folder {folder} is not an absolute path")
    if not folder.exists():
        raise SeedError(
            f"the seed staging folder {folder} does not exist on this machine: mount the "
            "seed disk there (or create the folder), then back up again"
        )
    if not folder.is_dir():
        raise SeedError(f"the seed staging folder {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SeedError(
            f"the seed staging folder {folder} is not writable by the Haven agent's user: "
            "give it write access there, then back up again"
        )
    staged = 0
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name in (SEED_HEADER, f".{SEED_HEADER}.tmp", RESERVED, *_TOP_LEVEL):
            continue
        raise SeedError(
            f"the seed staging folder {folder} holds {entry.name!r}, which is not part of a "
            "seed: choose an empty folder (or empty this one), then back up again"
        )
    data = folder / layout.DATA_PREFIX.rstrip("/")
    if data.is_dir():
        staged = sum(b.size for b in LocalDirectoryStore(folder).list(layout.DATA_PREFIX))
    return staged


# What a seed folder holds at its top: the engine's blobs (docs/storage-format.md).
_TOP_LEVEL = ("config", "keys", "data", "index", "snapshots")


def staging_space_check(folder: Path, data_bytes: int, *, staged: int = 0) -> None:
    """Raise ``StagingTooSmall`` unless ``folder``'s disk can take ``data_bytes`` (the data
    counted so far, before compression) less what the folder holds already."""
    needed = max(0, data_bytes - staged)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise StagingTooSmall(
            f"the seed staging folder {folder} has {size_text(free)} free, but the data to back "
            f"up is {size_text(data_bytes)} (counted so far, before compression): it needs about "
            f"{size_text(needed)} there. Mount a larger disk at {folder} or free space on it, "
            "then back up again"
        )


def staged_blobs(root: Path) -> list[dict]:
    """Every blob in the staging folder with its size and SHA-256, in name order."""
    rows = []
    for blob in LocalDirectoryStore(root).list(""):
        if blob.name == SEED_HEADER or blob.name.startswith(RESERVED + "/"):
            continue
        if not blob_name_allowed(blob.name):
            raise SeedError(f"the staging folder holds a file that is no blob: {blob.name}")
        path = root / blob.name
        rows.append({"name": blob.name, "size": blob.size, "sha256": file_sha256(path)})
    return sorted(rows, key=lambda r: r["name"])


def write_header(
    root: Path,
    *,
    identity: dict,
    repository_id: str,
    recovery_point_id: str,
    packs: Iterable[str],
    stats: dict,
    now: datetime | None = None,
) -> dict:
    """Write ``haven-seed.json`` (atomically: a temporary file renamed) and return it."""
    header = {
        "format": SEED_FORMAT,
        "version": SEED_VERSION,
        "vault": {"id": identity["vault_id"], "name": identity["vault_name"]},
        "machine": {"id": identity["machine_id"], "name": identity["machine_name"]},
        "repository_id": repository_id,
        "recovery_point_id": recovery_point_id,
        "manifest_blob": layout.manifest_blob(recovery_point_id),
        "packs": sorted(packs),
        "stats": stats,
        "created_at": (now or datetime.now(UTC)).isoformat(),
        "blobs": staged_blobs(root),
    }
    tmp = root / f".{SEED_HEADER}.tmp"
    tmp.write_text(json.dumps(header, indent=1))
    os.replace(tmp, root / SEED_HEADER)
    return header


def seed_export(
    *,
    container: BlobStore,
    staging: Path,
    passphrase: str,
    items: list[str],
    excludes: list[str],
    identity: dict,
    cache_dir: Path | None = None,
    sink=None,
    cancel=None,
    mapped: dict | None = None,
    warnings: list[dict] | None = None,
    check_space: Callable[[int], None] | None = None,
):
    """Back up ``items`` into ``staging`` as a seed of the repository in ``container``;
    returns ``(BackupResult, header)``. Nothing but ``config`` and the keys is read from
    the container, and nothing is written to it."""
    from agents.runtime import engine  # the engine's worker pool only when exporting

    if not items:
        raise SeedError(
            "this machine's backup policy has no items; set them in the portal and let the "
            "worker apply the policy first"
        )
    staging = Path(staging)
    target = LocalDirectoryStore(staging, create=True)
    repo_id = copy_repository_identity(container, target)
    repo = engine.Repository.open(target, passphrase)
    result = engine.run_backup(
        repo,
        sources=items,
        excludes=excludes,
        cache_dir=cache_dir,
        sink=sink,
        cancel=cancel,
        mapped=mapped,  # System State, when the policy includes it (jobs.backup.system_state)
        warnings=warnings or (),
        check_space=check_space,
    )
    if not result.recovery_point:
        raise SeedError(result.message or "the backup to the seed folder made no recovery point")
    header = write_header(
        staging,
        identity=identity,
        repository_id=repo_id,
        recovery_point_id=result.recovery_point,
        packs=result.packs,
        stats={
            "files": result.files,
            "logical_bytes": result.logical_bytes,
            "new_bytes": result.new_bytes,
            "added_bytes": result.added_bytes,
            "stored_bytes": result.stored_bytes,
        },
    )
    return result, header
