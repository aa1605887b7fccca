"""The interface every blob-store backend implements, and the errors it raises.

A store is one container (an Azure container, a directory): a flat namespace of blob
names that may contain ``/``. Backends raise only the errors below, never their
library's own, so callers (engine, portal) handle failures once.

Blobs are write-once: ``put`` creates, and no backend overwrites. The engine names every
blob it writes at random (or once, like ``config``), and agents' grants allow create but
not write, so a compromised machine cannot replace what a backup already stored.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Self


class StorageError(Exception):
    """Base of every storage failure; the message is meant for a person."""


class BlobNotFound(StorageError):
    def __init__(self, name: str):
        super().__init__(f"blob {name!r} does not exist")
        self.name = name


class BlobExists(StorageError):
    """``put`` of a name that already holds other bytes: blobs are never overwritten."""

    def __init__(self, name: str):
        super().__init__(
            f"blob {name!r} already exists with other contents; stored blobs are never overwritten"
        )
        self.name = name


class BlobForbidden(StorageError):
    """The credentials in use do not allow this operation (e.g. delete through a SAS)."""


class GrantExpired(BlobForbidden):
    """The grant (SAS or portal token) has expired: ask the portal for a new one."""


class ContainerNotFound(StorageError):
    """The container itself is missing (deleted, or never provisioned)."""


class InvalidBlobName(StorageError, ValueError):
    """A blob name the store refuses (empty, absolute, ``..``, NUL, reserved)."""


class InvalidGrant(StorageError, ValueError):
    """A grant this agent cannot use (unknown kind, missing field, bad date)."""


class StorageUnavailable(StorageError):
    """The storage could not be reached or answered with a server error. ``retry_after``:
    the seconds the server asked to be left alone (its ``Retry-After``), when it said."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int
    modified: datetime


class BlobStore(abc.ABC):
    """One container of blobs."""

    @property
    def fork_safe_reads(self) -> bool:
        """Forked processes may read through their copies of this store at once: nothing
        shared (no pooled connection) and no limit that would then hold per process only.
        Restores use processes for such stores (local files), threads for the others.
        Backends for which it holds set ``fork_safe_reads = True``; wrappers ask the store
        they wrap."""
        return False

    @abc.abstractmethod
    def put(self, name: str, data: bytes | memoryview) -> None:
        """Create blob ``name`` holding ``data``, atomically (readers see no blob or the
        whole one). When ``name`` already holds exactly ``data`` nothing happens, so a retry
        of a create that landed succeeds; when it holds other bytes, ``BlobExists``."""

    @abc.abstractmethod
    def get(self, name: str) -> bytes:
        """The whole blob; ``BlobNotFound`` when absent."""

    @abc.abstractmethod
    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end of the blob)."""

    @abc.abstractmethod
    def exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Blobs whose name starts with ``prefix``, in name order."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove a blob; ``BlobNotFound`` when absent, ``BlobForbidden`` without the right."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
