"""Recovery points with hand-made (hostile) entries, as an attacker holding the key could
write them."""

from __future__ import annotations

from agents.runtime.engine.format import FILE, Entry
from tests.runtime.engine.helpers import craft_recovery_point


def craft(repo, paths: list[bytes], content: bytes = b"pwned") -> str:
    """A recovery point whose files (one per path) all hold ``content``."""
    cid = repo.chunk_id(content)
    entries = [
        Entry(path=p, kind=FILE, mode=0o644, size=len(content), content=[(cid, len(content))])
        for p in paths
    ]
    return craft_recovery_point(repo, entries, chunks=[content])
