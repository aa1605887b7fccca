"""Blob storage behind one interface: local directory, Azure Blob, in memory, and the
portal's HTTP grant endpoint; plus wrappers that retry and throttle any of them, and
``open_grant`` that turns a portal grant into the right store. Every backend passes
``tests/runtime/blobstore`` conformance. Nothing here imports Django.

Backends live in their own modules (``memory``, ``local``, ``azure``, ``http``) so an
agent that never talks to Azure does not import the Azure SDK.
"""

from agents.runtime.blobstore.base import (
    BlobExists,
    BlobForbidden,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    ContainerNotFound,
    GrantExpired,
    InvalidBlobName,
    InvalidGrant,
    StorageError,
    StorageUnavailable,
)
from agents.runtime.blobstore.grants import grant_expiry, open_grant
from agents.runtime.blobstore.memory import MemoryStore
from agents.runtime.blobstore.retry import RetryingStore
from agents.runtime.blobstore.throttle import ThrottledStore

__all__ = [
    "BlobExists",
    "BlobForbidden",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "ContainerNotFound",
    "GrantExpired",
    "InvalidBlobName",
    "InvalidGrant",
    "MemoryStore",
    "RetryingStore",
    "StorageError",
    "StorageUnavailable",
    "ThrottledStore",
    "grant_expiry",
    "open_grant",
]
