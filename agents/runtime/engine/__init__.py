"""The backup engine: chunking, packing, crypto, the repository, backup, restore, verify.

It works on any ``agents.runtime.blobstore.BlobStore`` and imports no Django. The storage
format is in docs/storage-format.md, the progress events in docs/progress.md.

Public API (keyword-only arguments; every failure is an ``EngineError`` subclass whose message
is meant for a person; storage failures are the blobstore's ``StorageError`` family)::

    Repository.init(store, passphrase, *, kdf=None, chunker=None) -> Repository
    Repository.open(store, passphrase) -> Repository          # WrongPassphrase, RepositoryNotFound

    WalkAhead(sources, excludes=())       # start walking before Repository.open (overlaps scrypt)
    run_backup(repo, *, sources | walk, excludes=(), cache_dir=None, sink=None, cancel=None,
               tags=(), hostname=None, workers=None, compression_level=3, pack_size=16 MiB,
               upload_threads=2, check_space=None) -> BackupResult
                                          # check_space(previous point's bytes) may raise
    run_restore(repo, *, recovery_point, target, paths=None, on_conflict="overwrite",
                restore_owner=None, sink=None, cancel=None, writers=None) -> RestoreResult
                                          # TargetFull: the target's disk filled; files kept
    run_verify(repo, *, fraction=1.0, sink=None, cancel=None, seed=None) -> VerifyReport

    list_recovery_points(repo) -> list[RecoveryPoint]               # oldest first
    list_dir(repo, *, recovery_point, path="/") -> list[Entry]
    find(repo, *, pattern, recovery_points=None) -> Iterator[Found]
    file_versions(repo, *, path) -> list[FileVersion]

A ``recovery_point`` argument is a ``RecoveryPoint``, its 32-hex id, a unique prefix of it
(≥ 4 characters) or ``"latest"``. ``cancel`` is a ``threading.Event``; a cancelled backup
leaves the repository consistent (no recovery point, uploaded packs reused next time).
``BackupResult.packs`` lists the pack ids the recovery point references: the portal needs
them for garbage collection (pack id ``p`` is the blob ``layout.pack_blob(p)``,
``data/<p[:2]>/<p>``).

Results: ``BackupResult`` (status, recovery_point, files, dirs, symlinks, files_read,
files_unchanged, logical_bytes, new_bytes, added_bytes, stored_bytes, packs, warnings,
duration_s, message); ``RestoreResult`` (status, files, dirs, symlinks, bytes, skipped,
failed, warnings, duration_s, message); ``VerifyReport`` (ok, packs_checked, packs_total,
chunks_checked, bytes_checked, recovery_points_checked, damaged: list[DamagedPack(pack_id,
reason, bad_chunks, files)], missing, unreadable_recovery_points, duration_s, message).
Statuses: ``completed``, ``completed_with_warnings``, ``cancelled``. Warnings and failures are
``{"path": str, "reason": str}`` dicts (paths shown with undecodable bytes as ``\\xNN``).

Concurrency: a backup forks ``workers`` chunking processes (start method "fork": they
inherit the keys and a read-only index snapshot; they pack into shared memory) and uploads on
``upload_threads`` threads; a restore writes files on ``writers`` forked processes when the
store's ``fork_safe_reads`` allows (local storage), else on as many threads. Run one backup per
repository at a time.

Modules (orchestration first, then what it is built from)::

    backup        run_backup: the walk, unchanged files, the pipeline, the recovery point
    restore       run_restore: the manifest walk, folders, links, batches for the writers
    verify        run_verify: read back, authenticate, name the damaged files
    browse        read-only views: list_dir, find, file_versions
    scan          the walk in tree order, exclusions, backup sources
    previous      the previous recovery point, merge-joined with the walk
    chunkers      the chunking processes and ChunkerPool, their handle in the main process
    packer        packs in the main process: upload of every pack, index deltas
    upload_pool   the daemon threads packs are uploaded on
    metadata      a recovery point's entries as content-defined metadata chunks
    owners        uid/gid <-> user and group names
    target        the restore target: safe manifest paths, folders never followed through a link
    file_writer   writes one restored file: conflict policy, content, metadata
    writer_pool   the restore's writer processes (or threads)
    forked        what every forked helper process does first
    repository    the repository on a BlobStore: keys, index, manifests, ChunkReader
    layout        the names of a repository's blobs (the one definition)
    index         the compact chunk index
    format        byte layouts of what is stored
    crypto        keys, scrypt, AES-GCM, keyed BLAKE3
    paths         absolute normalised paths and tests against selections
    progress      progress events and sinks
    errors        every failure the engine raises (and its internal Cancelled)
    cli           python -m agents.runtime.engine (a developer tool)
"""

from agents.runtime.engine.backup import BackupResult, run_backup
from agents.runtime.engine.browse import (
    FileVersion,
    Found,
    file_versions,
    find,
    list_dir,
    list_recovery_points,
)
from agents.runtime.engine.crypto import DEFAULT_KDF, ChunkerParams
from agents.runtime.engine.errors import (
    ChunkMissing,
    EngineError,
    IntegrityError,
    InvalidArgument,
    RecoveryPointNotFound,
    RepositoryExists,
    RepositoryNotFound,
    TargetFull,
    UnsafePath,
    UnsupportedFormat,
    WrongPassphrase,
)
from agents.runtime.engine.format import Entry
from agents.runtime.engine.progress import (
    Event,
    ListSink,
    NullSink,
    ProgressSink,
    ThrottledSink,
)
from agents.runtime.engine.repository import PackDamaged, RecoveryPoint, Repository
from agents.runtime.engine.restore import RestoreResult, run_restore
from agents.runtime.engine.scan import WalkAhead
from agents.runtime.engine.verify import DamagedPack, VerifyReport, run_verify

__all__ = [
    "DEFAULT_KDF",
    "BackupResult",
    "ChunkMissing",
    "ChunkerParams",
    "DamagedPack",
    "EngineError",
    "Entry",
    "Event",
    "FileVersion",
    "Found",
    "IntegrityError",
    "InvalidArgument",
    "ListSink",
    "NullSink",
    "PackDamaged",
    "ProgressSink",
    "RecoveryPoint",
    "RecoveryPointNotFound",
    "Repository",
    "RepositoryExists",
    "RepositoryNotFound",
    "RestoreResult",
    "TargetFull",
    "ThrottledSink",
    "UnsafePath",
    "UnsupportedFormat",
    "VerifyReport",
    "WalkAhead",
    "WrongPassphrase",
    "file_versions",
    "find",
    "list_dir",
    "list_recovery_points",
    "run_backup",
    "run_restore",
    "run_verify",
]
