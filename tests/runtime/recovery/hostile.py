"""Recovery points with hand-made (hostile) entries, as an attacker holding the key could
write them."""

from __future__ import annotations

import os

from agents.runtime.engine import RecoveryPoint
from agents.runtime.engine.format import FILE, Entry, encode_chunk
from agents.runtime.engine.metadata import MetadataWriter
from agents.runtime.engine.packer import Packer
from agents.runtime.engine.repository import now


def craft(repo, paths: list[bytes], content: bytes = b"pwned") -> str:
    """A recovery point whose files (one per path) all hold ``content``."""
    repo.load_index()
    packer = Packer(repo, 1 << 20, 1)
    cid = repo.chunk_id(content)
    packer.add(cid, encode_chunk(content, cid, repo.sealer, None), len(content))
    meta = MetadataWriter(repo, packer)
    for p in paths:
        meta.add(Entry(path=p, kind=FILE, mode=0o644, size=len(content),
                       content=[(cid, len(content))]))  # fmt: skip
    ids = meta.finish()
    packer.seal_pack()
    packer.close()
    rp = RecoveryPoint(
        id=os.urandom(16).hex(), time=now(), hostname="evil", sources=["/"], tags=[],
        status="completed", stats={}, packs=[], meta=[i.hex() for i in ids],
    )  # fmt: skip
    repo.write_recovery_point(rp)
    return rp.id
