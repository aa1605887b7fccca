"""The names of a repository's blobs (docs/storage-format.md): the one definition.

The engine writes and reads these; the portal, which deletes expired recovery points and
unreferenced packs with the account key, finds them by the same names.
"""

from __future__ import annotations

CONFIG_BLOB = "config"
KEYS_PREFIX = "keys/"
INDEX_PREFIX = "index/"
DATA_PREFIX = "data/"  # packs: data/<first two hex digits>/<pack id in hex>
SNAPSHOTS_PREFIX = "snapshots/"  # one manifest per recovery point: snapshots/<id>


def pack_blob(pack_id: str | bytes) -> str:
    """The blob holding pack ``pack_id`` (hex text, or the raw bytes)."""
    h = pack_id.hex() if isinstance(pack_id, bytes | bytearray) else pack_id
    return f"{DATA_PREFIX}{h[:2]}/{h}"


def pack_id_of(blob_name: str) -> str:
    """The pack id (hex) of a blob under ``data/``."""
    return blob_name.rsplit("/", 1)[-1]


def manifest_blob(recovery_point_id: str) -> str:
    """The manifest of recovery point ``recovery_point_id`` (its 32-hex id)."""
    return f"{SNAPSHOTS_PREFIX}{recovery_point_id}"


def key_blob(key_name: str) -> str:
    return f"{KEYS_PREFIX}{key_name}"


def index_blob(name: str) -> str:
    return f"{INDEX_PREFIX}{name}"
