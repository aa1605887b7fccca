"""Keys and authenticated encryption.

A random master key set (``data_key`` for AES-256-GCM, ``id_key`` for the keyed BLAKE3 chunk
ids, a secret chunker seed) is wrapped by a key derived from the passphrase with scrypt.
Every sealed object is ``nonce(12) || ciphertext || tag(16)`` and binds associated data naming
what it is (kind and id), so a stored object cannot be swapped for another one.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from agents.runtime.engine.errors import IntegrityError, InvalidArgument, WrongPassphrase

NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG

# scrypt N=2**16, r=8, p=1: 64 MiB and ~0.35 s here. That is restic's class (it calibrates to
# <= 60 MiB / 0.5 s); OWASP's minimum is N=2**17 (128 MiB): pass kdf={"n": 2**17} for that, at
# the price of 64 MiB more peak memory and ~0.4 s more per unlock.
DEFAULT_KDF = {"name": "scrypt", "n": 2**16, "r": 8, "p": 1}


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 512 * 1024
    avg_size: int = 2 * 1024 * 1024
    max_size: int = 8 * 1024 * 1024
    seed: int = 0

    def to_json(self) -> dict:
        return {"min": self.min_size, "avg": self.avg_size, "max": self.max_size, "seed": self.seed}

    @classmethod
    def from_json(cls, d: dict) -> ChunkerParams:
        return cls(min_size=d["min"], avg_size=d["avg"], max_size=d["max"], seed=d["seed"])


@dataclass(frozen=True)
class MasterKeys:
    data_key: bytes
    id_key: bytes
    chunker: ChunkerParams

    @classmethod
    def generate(cls, chunker: ChunkerParams) -> MasterKeys:
        seed = int.from_bytes(os.urandom(4), "little") or 1
        params = ChunkerParams(chunker.min_size, chunker.avg_size, chunker.max_size, seed)
        return cls(data_key=os.urandom(32), id_key=os.urandom(32), chunker=params)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "data_key": base64.b64encode(self.data_key).decode(),
                "id_key": base64.b64encode(self.id_key).decode(),
                "chunker": self.chunker.to_json(),
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKeys:
        d = json.loads(raw)
        return cls(
            data_key=base64.b64decode(d["data_key"]),
            id_key=base64.b64decode(d["id_key"]),
            chunker=ChunkerParams.from_json(d["chunker"]),
        )


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    raw = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
    if not raw:
        raise InvalidArgument("the passphrase is empty; choose a long passphrase")
    return raw


def derive_kek(passphrase: str | bytes, kdf: dict) -> bytes:
    if kdf.get("name") != "scrypt":
        raise InvalidArgument(f"unknown key derivation {kdf.get('name')!r}")
    salt = base64.b64decode(kdf["salt"])
    return Scrypt(salt=salt, length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(
        _passphrase_bytes(passphrase)
    )


def wrap_keys(keys: MasterKeys, passphrase: str | bytes, kdf: dict, *, key_name: str) -> bytes:
    """The ``keys/<name>`` blob: KDF parameters in clear, the master keys sealed."""
    params = {**DEFAULT_KDF, **kdf, "salt": base64.b64encode(os.urandom(16)).decode()}
    kek = derive_kek(passphrase, params)
    sealed = Sealer(kek).seal(keys.to_bytes(), b"keys\0" + key_name.encode())
    doc = {"version": 1, "kdf": params, "wrapped": base64.b64encode(sealed).decode()}
    return json.dumps(doc, indent=1).encode()


def unwrap_keys(blob: bytes, passphrase: str | bytes, *, key_name: str) -> MasterKeys:
    doc = json.loads(blob)
    kek = derive_kek(passphrase, doc["kdf"])
    try:
        raw = Sealer(kek).open(base64.b64decode(doc["wrapped"]), b"keys\0" + key_name.encode())
    except IntegrityError:
        raise WrongPassphrase() from None
    return MasterKeys.from_bytes(raw)


class Sealer:
    """AES-256-GCM with a random 96-bit nonce per object. NIST's bound for random nonces is
    2**32 messages per key: with ~2 MiB average chunks (deduplicated) that is ~8 PiB of
    unique data per repository."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes | memoryview, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, plaintext, ad)

    def seal_into(self, plaintext: bytes | memoryview, ad: bytes, out: memoryview) -> int:
        """``seal`` written straight into ``out`` (``len(plaintext) + OVERHEAD`` bytes):
        no new buffer per object. Returns the sealed length."""
        nonce = os.urandom(NONCE)
        out[:NONCE] = nonce
        end = NONCE + len(plaintext) + TAG
        return NONCE + self._aead.encrypt_into(nonce, plaintext, ad, out[NONCE:end])

    def open(self, sealed: bytes | memoryview, ad: bytes) -> bytes:
        if len(sealed) < OVERHEAD:
            raise IntegrityError("sealed object is truncated")
        mv = memoryview(sealed)
        try:
            return self._aead.decrypt(mv[:NONCE], mv[NONCE:], ad)
        except InvalidTag:
            raise IntegrityError("authentication failed (data damaged or tampered)") from None


def chunk_hasher(id_key: bytes):
    """Keyed BLAKE3: storage sees ids that reveal nothing about the plaintext."""

    def chunk_id(data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=id_key).digest()

    return chunk_id
