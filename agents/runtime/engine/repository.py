"""The repository on a ``BlobStore``: keys, packs, the chunk index and recovery points.

Blob names (all opaque to the store except for sizes; spelled once, in ``layout``)::

    config                  plain JSON: format, version, repository id
    keys/<16 hex>           plain JSON: scrypt parameters + the sealed master keys
    data/<2 hex>/<32 hex>   packs (the 32 hex are the pack id reported to the portal)
    index/<32 hex>          sealed index deltas (which chunk is where)
    snapshots/<32 hex>      sealed manifests, one per recovery point

The engine only ever creates blobs (never overwrites or deletes): the agent's SAS has no
delete permission; garbage collection is the portal's (see DESIGN.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from agents.runtime.blobstore.base import BlobNotFound, BlobStore
from agents.runtime.engine.crypto import (
    DEFAULT_KDF,
    ChunkerParams,
    MasterKeys,
    Sealer,
    chunk_hasher,
    unwrap_keys,
    wrap_keys,
)
from agents.runtime.engine.errors import (
    ChunkMissing,
    IntegrityError,
    RecoveryPointNotFound,
    RepositoryExists,
    RepositoryNotFound,
    UnsupportedFormat,
)
from agents.runtime.engine.format import (
    TRAILER,
    Entry,
    EntryRef,
    decode_chunk,
    decode_entries,
    decode_index,
    encode_index,
    parse_pack_header,
    scan_entries,
)
from agents.runtime.engine.index import ChunkIndex
from agents.runtime.engine.layout import (
    CONFIG_BLOB,
    DATA_PREFIX,
    INDEX_PREFIX,
    KEYS_PREFIX,
    SNAPSHOTS_PREFIX,
    index_blob,
    key_blob,
    manifest_blob,
    pack_blob,
    pack_id_of,
)

FORMAT_VERSION = 1
STORE_LEVEL = -1  # zstd's fast level: what is compressed already passes nearly as it is


class PackDamaged(IntegrityError):
    """A chunk of this pack failed authentication, or the pack is missing or truncated."""

    def __init__(self, pack_id: bytes, reason: str):
        super().__init__(f"pack {pack_id.hex()} is damaged: {reason}")
        self.pack_id = pack_id
        self.reason = reason


@dataclass
class RecoveryPoint:
    """The manifest of one backup, as listed (entries are streamed separately)."""

    id: str
    time: datetime
    hostname: str
    sources: list[str]
    tags: list[str]
    status: str
    stats: dict
    packs: list[str]
    meta: list[str] = field(repr=False, default_factory=list)
    parent: str | None = None

    def to_json(self) -> dict:
        return {
            "version": FORMAT_VERSION,
            "id": self.id,
            "time": self.time.isoformat(),
            "hostname": self.hostname,
            "sources": self.sources,
            "tags": self.tags,
            "status": self.status,
            "stats": self.stats,
            "packs": self.packs,
            "meta": self.meta,
            "parent": self.parent,
        }

    @classmethod
    def from_json(cls, d: dict) -> RecoveryPoint:
        if d.get("version", 0) > FORMAT_VERSION:
            raise UnsupportedFormat("recovery point written by a newer Haven; upgrade")
        return cls(
            id=d["id"],
            time=datetime.fromisoformat(d["time"]),
            hostname=d["hostname"],
            sources=d["sources"],
            tags=d["tags"],
            status=d["status"],
            stats=d["stats"],
            packs=d["packs"],
            meta=d["meta"],
            parent=d.get("parent"),
        )


class Repository:
    """An opened repository: the keys and the chunk index. Use ``init`` or ``open``."""

    def __init__(self, store: BlobStore, keys: MasterKeys, repo_id: str, key_name: str):
        self.store = store
        self.keys = keys
        self.id = repo_id
        self.key_name = key_name
        self.sealer = Sealer(keys.data_key)
        self.chunk_id = chunk_hasher(keys.id_key)
        self.index = ChunkIndex()
        self._index_names: set[str] = set()
        self._index_loaded = False

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        store: BlobStore,
        passphrase: str | bytes,
        *,
        kdf: dict | None = None,
        chunker: ChunkerParams | None = None,
    ) -> Repository:
        """Create a repository in an empty store. ``kdf`` overrides scrypt's n, r, p."""
        if store.exists(CONFIG_BLOB) or any(True for _ in store.list(KEYS_PREFIX)):
            raise RepositoryExists()
        keys = MasterKeys.generate(chunker or ChunkerParams())
        key_name = os.urandom(8).hex()
        store.put(
            key_blob(key_name), wrap_keys(keys, passphrase, kdf or DEFAULT_KDF, key_name=key_name)
        )
        repo_id = os.urandom(16).hex()
        config = {"format": "haven-repository", "version": FORMAT_VERSION, "id": repo_id}
        store.put(CONFIG_BLOB, json.dumps(config).encode())
        return cls(store, keys, repo_id, key_name)

    @classmethod
    def open(cls, store: BlobStore, passphrase: str | bytes) -> Repository:
        """Open with the passphrase; ``WrongPassphrase`` when no key opens with it."""
        names = [b.name for b in store.list(KEYS_PREFIX)]
        if not names:
            raise RepositoryNotFound()
        try:
            config = json.loads(store.get(CONFIG_BLOB))
        except BlobNotFound:
            raise RepositoryNotFound() from None
        if config.get("format") != "haven-repository":
            raise RepositoryNotFound()
        if config.get("version", 0) > FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository format {config['version']} is newer than this Haven supports "
                f"({FORMAT_VERSION}); upgrade the agent"
            )
        last_error: Exception | None = None
        for name in names:
            key_name = name.removeprefix(KEYS_PREFIX)
            try:
                keys = unwrap_keys(store.get(name), passphrase, key_name=key_name)
            except Exception as exc:  # WrongPassphrase; try the next key
                last_error = exc
                continue
            return cls(store, keys, config["id"], key_name)
        assert last_error is not None
        raise last_error

    def add_key(self, passphrase: str | bytes, *, kdf: dict | None = None) -> str:
        """Wrap the same master keys with another passphrase, as a new ``keys/<name>``
        blob (blobs are write-once: the old key blob stays until the portal removes it).
        Returns the new key's name. Nothing else in the repository changes."""
        params = {k: v for k, v in self.kdf_params().items() if k in ("n", "r", "p")}
        key_name = os.urandom(8).hex()
        self.store.put(
            key_blob(key_name),
            wrap_keys(self.keys, passphrase, kdf or params or DEFAULT_KDF, key_name=key_name),
        )
        return key_name

    def kdf_params(self) -> dict:
        return json.loads(self.store.get(key_blob(self.key_name)))["kdf"]

    # -- sealed small blobs ----------------------------------------------------------------
    def put_sealed(self, name: str, plaintext: bytes, *, level: int = 3) -> None:
        # fresh (de)compressors: zstandard objects must not be shared between threads
        comp = zstandard.ZstdCompressor(level=level).compress(plaintext)
        self.store.put(name, self.sealer.seal(comp, name.encode()))

    def get_sealed(self, name: str) -> bytes:
        raw = self.sealer.open(self.store.get(name), name.encode())
        return zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 31)

    # -- index ---------------------------------------------------------------------------
    def _cache_paths(self, cache_dir: Path) -> tuple[Path, Path]:
        base = Path(cache_dir) / f"repo-{self.id}"
        return base / "index.bin", base / "index.json"

    def load_index(self, cache_dir: Path | None = None) -> ChunkIndex:
        """Load (once) every index blob, starting from the local cache when it is usable."""
        if self._index_loaded:
            return self.index
        names = {b.name for b in self.store.list(INDEX_PREFIX)}
        if cache_dir is not None:
            bin_path, json_path = self._cache_paths(cache_dir)
            try:
                covered = set(json.loads(json_path.read_text())["names"])
                if covered <= names:
                    with open(bin_path, "rb") as f:
                        self.index = ChunkIndex.load_frames(f, self._cache_unseal)
                    self._index_names = covered
            except (OSError, ValueError, KeyError, IntegrityError):
                self.index, self._index_names = ChunkIndex(), set()
        # A chunk stored again after garbage collection removed its pack is named by two
        # deltas, and the first merged wins (names are random): packs no longer stored are
        # dead before any delta merges, so the live copy is the one kept.
        stored = self._stored_pack_ids()
        gone = [
            no
            for no, pack_id in enumerate(self.index.pack_ids)
            if pack_id not in stored and not self.index.is_dead(no)
        ]
        if gone and self._index_names:
            # The cache keeps one copy of each chunk. A pack deleted since it was saved may
            # have held the copy it kept while another stored pack holds the chunk too
            # (compaction copied it there, and the portal then deleted the old pack): only
            # the deltas name the other copy, so read them all again.
            self.index, self._index_names = ChunkIndex(), set()
        for no, pack_id in enumerate(self.index.pack_ids):
            if pack_id not in stored:
                self.index.mark_dead(no)
        for name in sorted(names - self._index_names):
            self._merge_index_blob(name, stored)
        self._index_loaded = True
        return self.index

    def _stored_pack_ids(self) -> set[bytes]:
        stored = set()
        for info in self.store.list(DATA_PREFIX):
            try:
                stored.add(bytes.fromhex(pack_id_of(info.name)))
            except ValueError:
                continue
        return stored

    def _merge_index_blob(self, name: str, stored: set[bytes]) -> None:
        for pack_id, size, rows in decode_index(self.get_sealed(name)):
            no = self.index.add_pack(pack_id, size)
            if pack_id not in stored:
                self.index.mark_dead(no)
            self.index.add_rows(no, rows)
        self._index_names.add(name)

    def _add_pack_rows(self, pack_id: bytes, size: int, rows) -> None:
        self.index.add_rows(self.index.add_pack(pack_id, size), rows)

    def save_index_cache(self, cache_dir: Path | None) -> str | None:
        """Keep the index on this machine for the next backup. A cache that cannot be
        written (its disk is full) is no failure: the next backup reads the index from
        storage instead. Returns why it was not saved, or None."""
        if cache_dir is None:
            return None
        bin_path, json_path = self._cache_paths(cache_dir)
        tmp, tmpj = bin_path.with_suffix(".tmp"), json_path.with_suffix(".tmp")
        try:
            bin_path.parent.mkdir(parents=True, exist_ok=True)
            # the names go first: a cache whose names are gone is never trusted
            json_path.unlink(missing_ok=True)
            # Sealed (the cache sits on the machine, but it names every chunk id), a frame
            # at a time: a copy of a large index would double the backup's peak memory.
            with open(tmp, "wb") as f:
                self.index.save_frames(f, self._cache_seal)
            os.replace(tmp, bin_path)
            tmpj.write_text(json.dumps({"names": sorted(self._index_names)}))
            os.replace(tmpj, json_path)
        except OSError as exc:
            for leftover in (tmp, tmpj, bin_path):
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
            free = ""
            with contextlib.suppress(OSError):
                free = f", {shutil.disk_usage(cache_dir).free:,} bytes free"
            return (
                f"the index cache could not be saved in the cache location {cache_dir} "
                f"({exc.strerror or exc}; it needs {self.index.cache_size():,} bytes{free}): the next "
                "backup reads the index from storage instead. Free some space there or "
                "move the cache with haven-agent configure --cache-dir DIR."
            )
        return None

    def _cache_seal(self, plaintext: bytes | memoryview, ad: bytes) -> bytes:
        return self.sealer.seal(plaintext, b"index-cache\0" + self.id.encode() + ad)

    def _cache_unseal(self, sealed: bytes, ad: bytes) -> bytes:
        return self.sealer.open(sealed, b"index-cache\0" + self.id.encode() + ad)

    def write_index(
        self, packs: Sequence[tuple[bytes, int, list[tuple[bytes, int, int, int]] | bytes]]
    ) -> str:
        name = index_blob(os.urandom(16).hex())
        # ``encode_index`` compressed it already: the sealed blob's own frame, which every
        # Haven reads, stores it nearly as it is (it was level 3 until 2026-12-07).
        self.put_sealed(name, encode_index(packs), level=STORE_LEVEL)
        self._index_names.add(name)
        return name

    def sync_packs(self) -> list[bytes]:
        """Reconcile the index with the packs really stored.

        Packs uploaded by an interrupted run but never indexed are read back (their sealed
        header says what they hold) and indexed, so their chunks are reused; packs removed by
        garbage collection are forgotten so nothing is deduplicated against them.
        Returns the ids of recovered packs.
        """
        present: dict[bytes, int] = {}
        for info in self.store.list(DATA_PREFIX):
            try:
                present[bytes.fromhex(pack_id_of(info.name))] = info.size
            except ValueError:
                continue
        for no, pack_id in enumerate(self.index.pack_ids):
            if pack_id not in present:
                self.index.mark_dead(no)
        recovered = []
        for pack_id, size in present.items():
            if self.index.has_pack(pack_id) and not self.index.is_dead(self.index.pack_no(pack_id)):
                continue
            try:
                rows = self.read_pack_header(pack_id, size)
            except Exception:  # a truncated or foreign blob: leave it to garbage collection
                continue
            self._add_pack_rows(pack_id, size, rows)
            recovered.append((pack_id, size, rows))
        if recovered:
            self.write_index(recovered)
        return [p for p, _, _ in recovered]

    def parse_pack(self, blob: bytes, pack_id: bytes) -> list[tuple[bytes, int, int, int]]:
        """The rows of a whole pack read into memory (its sealed header, authenticated)."""
        return parse_pack_header(blob, self.sealer, pack_id)

    def read_pack_header(self, pack_id: bytes, size: int):
        name = pack_blob(pack_id)
        want = min(size, 256 * 1024)
        tail = self.store.get_range(name, size - want, want)
        (hlen,) = TRAILER.unpack_from(tail, len(tail) - TRAILER.size)
        if hlen + TRAILER.size > len(tail) and hlen + TRAILER.size <= size:
            tail = self.store.get_range(name, size - hlen - TRAILER.size, hlen + TRAILER.size)
        return parse_pack_header(tail, self.sealer, pack_id)

    # -- recovery points -------------------------------------------------------------------
    def write_recovery_point(self, rp: RecoveryPoint) -> None:
        self.put_sealed(manifest_blob(rp.id), json.dumps(rp.to_json()).encode())

    def list_recovery_points(self) -> list[RecoveryPoint]:
        out = []
        for info in self.store.list(SNAPSHOTS_PREFIX):
            out.append(RecoveryPoint.from_json(json.loads(self.get_sealed(info.name))))
        out.sort(key=lambda rp: (rp.time, rp.id))
        return out

    def recovery_point(self, ref: str | RecoveryPoint) -> RecoveryPoint:
        """By id, unique id prefix (≥ 4 characters) or ``"latest"``."""
        if isinstance(ref, RecoveryPoint):
            return ref
        if len(ref) == 32:
            try:
                return RecoveryPoint.from_json(json.loads(self.get_sealed(manifest_blob(ref))))
            except BlobNotFound:
                raise RecoveryPointNotFound(ref) from None
        rps = self.list_recovery_points()
        if ref == "latest" and rps:
            return rps[-1]
        found = [rp for rp in rps if len(ref) >= 4 and rp.id.startswith(ref)]
        if len(found) != 1:
            raise RecoveryPointNotFound(ref)
        return found[0]

    def iter_entries(self, rp: RecoveryPoint, reader: ChunkReader | None = None) -> Iterator[Entry]:
        """Stream a recovery point's entries in tree order (bounded memory)."""
        self.load_index()
        reader = reader or ChunkReader(self)
        buf = b""
        for hex_id in rp.meta:
            buf += reader.read(bytes.fromhex(hex_id))
            entries, pos = decode_entries(buf)
            yield from entries
            buf = buf[pos:]
        if buf:
            raise IntegrityError(f"recovery point {rp.id} ends in a truncated entry")

    def iter_entry_refs(self, rp: RecoveryPoint) -> Iterator[list[EntryRef]]:
        """``iter_entries`` located, not built: per metadata chunk, the ``scan_entries`` of
        the entries it completes (what a backup compares with the tree it walks)."""
        self.load_index()
        reader = ChunkReader(self)
        buf = b""
        for hex_id in rp.meta:
            buf += reader.read(bytes.fromhex(hex_id))
            refs, pos = scan_entries(buf)
            if refs:
                yield refs
            buf = buf[pos:]
        if buf:
            raise IntegrityError(f"recovery point {rp.id} ends in a truncated entry")


def default_hostname() -> str:
    return socket.gethostname()


def now() -> datetime:
    return datetime.now(UTC)


class ChunkReader:
    """Reads chunks through a small cache of pack windows (bounded: ``slots`` × ``window``).

    Restores read packs mostly in the order backups wrote them, so one ranged read serves
    many chunks; a chunk larger than the window is read alone.
    """

    def __init__(self, repo: Repository, *, window: int = 4 << 20, slots: int = 3):
        self.repo = repo
        self.window = window
        self.slots = slots
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._hot: tuple[int, int, memoryview] = (-1, 0, memoryview(b""))  # the last window used
        self.bytes_read = 0

    def locate(self, chunk_id: bytes) -> tuple[int, int, int, int]:
        loc = self.repo.index.get(chunk_id)
        if loc is None:
            raise ChunkMissing(chunk_id)
        return loc

    def read(self, chunk_id: bytes) -> bytes:
        pno, off, length, raw = self.locate(chunk_id)
        pack_id = self.repo.index.pack_ids[pno]
        blob = self._range(pno, pack_id, off, length)
        if len(blob) != length:
            raise PackDamaged(pack_id, "pack is truncated")
        try:
            # The GCM tag binds the chunk to its id (associated data), so the keyed hash need
            # not be recomputed here; verify does recompute it.
            return decode_chunk(blob, chunk_id, self.repo.sealer, raw)
        except IntegrityError as exc:
            raise PackDamaged(pack_id, str(exc)) from None

    def _range(self, pno: int, pack_id: bytes, off: int, length: int) -> memoryview | bytes:
        hot_pno, hot_start, hot = self._hot  # (chunks read one after another share a window)
        if hot_pno == pno and hot_start <= off and off + length <= hot_start + len(hot):
            return hot[off - hot_start : off - hot_start + length]
        for (cpno, start), data in self._cache.items():
            if cpno == pno and start <= off and off + length <= start + len(data):
                self._cache.move_to_end((cpno, start))
                self._hot = (pno, start, memoryview(data))
                return self._hot[2][off - start : off - start + length]
        name = pack_blob(pack_id)
        try:
            if length >= self.window:
                data = self.repo.store.get_range(name, off, length)
                self.bytes_read += len(data)
                return data
            size = self.repo.index.pack_sizes[pno]
            want = min(self.window, max(size - off, length))
            data = self.repo.store.get_range(name, off, want)
        except BlobNotFound:
            raise PackDamaged(pack_id, "pack is missing from storage") from None
        self.bytes_read += len(data)
        self._cache[(pno, off)] = data
        while len(self._cache) > self.slots:
            self._cache.popitem(last=False)
        self._hot = (pno, off, memoryview(data))
        return self._hot[2][:length]
