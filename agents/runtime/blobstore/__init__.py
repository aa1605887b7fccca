"""Blob storage behind one interface: local directory, Azure Blob, in memory, and the
portal's HTTP grant endpoint. Every backend passes ``tests/runtime/blobstore`` conformance.
"""

from agents.runtime.blobstore.base import (
    BlobForbidden,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    StorageError,
    StorageUnavailable,
)

__all__ = [
    "BlobForbidden",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "StorageError",
    "StorageUnavailable",
]
