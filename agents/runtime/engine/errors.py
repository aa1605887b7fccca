"""Every failure the engine raises, each with a message a person can act on.

And ``Cancelled``, the engine's own signal that ``cancel`` was set (it never leaves the engine).
"""

from __future__ import annotations

import shutil

from agents.runtime.engine.layout import KEYS_PREFIX


class EngineError(Exception):
    """Base of every engine failure; the message is meant for a person."""


class WrongPassphrase(EngineError):
    def __init__(self) -> None:
        super().__init__(
            "the passphrase does not open this repository's key; check for typos and the "
            "keyboard layout. Without the right passphrase the data cannot be recovered."
        )


class RepositoryNotFound(EngineError):
    def __init__(self) -> None:
        super().__init__(
            f"no Haven repository here (no key found under {KEYS_PREFIX!r}); initialise it first "
            "or check the storage location"
        )


class RepositoryExists(EngineError):
    def __init__(self) -> None:
        super().__init__("a Haven repository already exists here; open it instead")


class UnsupportedFormat(EngineError):
    """The repository was written by a newer Haven than this one."""


class IntegrityError(EngineError):
    """Stored data failed authentication or does not match its id (damaged or tampered)."""


class RecoveryPointNotFound(EngineError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"no recovery point {ref!r} in this repository")
        self.ref = ref


class InvalidArgument(EngineError, ValueError):
    """A caller passed something the engine cannot use (e.g. a relative source path)."""


class ChunkMissing(IntegrityError):
    def __init__(self, chunk_id: bytes) -> None:
        super().__init__(
            f"chunk {chunk_id.hex()[:16]}… is not in any pack of the index; the repository "
            "is incomplete (run verify)"
        )
        self.chunk_id = chunk_id


class TargetFull(EngineError):
    """The restore target's disk filled up: the restore stopped; finished files are kept."""

    def __init__(self, target, restored: int, needed: int) -> None:
        try:
            free = f"{shutil.disk_usage(target).free:,} bytes free"
        except OSError:
            free = "its free space unknown"
        super().__init__(
            f"the disk holding the restore target {target} is full ({free}); the restore "
            f"stopped after {restored} files, which are complete and kept. The files not "
            f"restored need about {needed:,} bytes more: free that much space there (or "
            "choose another target) and restore again; choose to skip existing files to "
            "carry on where this restore stopped."
        )
        self.target, self.restored, self.needed = target, restored, needed


class UnsafePath(EngineError):
    """A manifest path that would escape the target (``..``, NUL, a symlinked parent …)."""


class Cancelled(Exception):
    """Raised deep in a backup or restore (waiting for an upload slot, writing a file) when
    ``cancel`` is set; ``run_backup`` and ``run_restore`` turn it into their ordinary cancelled
    result, so it never reaches a caller. Not an ``EngineError``: it is no failure."""
