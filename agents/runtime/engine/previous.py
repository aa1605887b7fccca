"""The previous recovery point, merge-joined with the walk: which entry a path had last time."""

from __future__ import annotations

from collections.abc import Iterable

from agents.runtime.blobstore.base import StorageError
from agents.runtime.engine.errors import EngineError
from agents.runtime.engine.format import Entry


class PreviousCursor:
    """Merge-join cursor over the previous recovery point (both are in tree order).

    If the previous manifest cannot be read (damaged), the cursor just ends: every file is
    read again, which is slower but correct."""

    def __init__(self, entries: Iterable[Entry] | None):
        self._it = iter(entries) if entries is not None else iter(())
        self.broken: str | None = None
        self._advance()

    def _advance(self) -> None:
        try:
            self._cur = next(self._it, None)
        except (EngineError, StorageError) as exc:
            self.broken = str(exc)
            self._cur = None

    def find(self, path: bytes) -> Entry | None:
        """The previous entry for ``path``; paths must come in tree order, each once."""
        cur = self._cur
        if cur is not None and cur.path != path:
            key = path.split(b"/")
            while cur is not None and cur.path.split(b"/") < key:
                self._advance()
                cur = self._cur
            if cur is not None and cur.path != path:
                return None  # new since then
        if cur is not None:
            self._advance()  # a match is never asked for again
        return cur
