"""The previous recovery point, merge-joined with the walk: which entry a path had last time."""

from __future__ import annotations

from collections.abc import Iterable

from agents.runtime.blobstore.base import StorageError
from agents.runtime.engine.errors import EngineError
from agents.runtime.engine.format import EntryRef


class PreviousCursor:
    """Merge-join cursor over the previous recovery point (both are in tree order).

    It walks the entries located by ``scan_entries`` (``Repository.iter_entry_refs``: one
    list per metadata chunk) and builds no ``Entry``: the backup compares the fixed fields
    and copies an unchanged item's bytes through; ``format.entry_at`` builds a changed one's.
    If the previous manifest cannot be read (damaged), the cursor just ends: every file is
    read again, which is slower but correct."""

    def __init__(self, blocks: Iterable[list[EntryRef]] | None):
        self._blocks = iter(blocks) if blocks is not None else iter(())
        self.broken: str | None = None
        self._refs: list[EntryRef] = []
        self._i = -1
        self._cur: EntryRef | None = None
        self._advance()

    def _advance(self) -> None:
        self._i += 1
        if self._i < len(self._refs):
            self._cur = self._refs[self._i]
            return
        try:
            self._refs = next(self._blocks, [])
        except (EngineError, StorageError) as exc:
            self.broken = str(exc)
            self._refs = []
        self._i = 0
        self._cur = self._refs[0] if self._refs else None

    def find(self, path: bytes) -> EntryRef | None:
        """The previous entry for ``path``; paths must come in tree order, each once."""
        cur = self._cur
        if cur is not None and cur[0] != path:
            key = path.split(b"/")
            while cur is not None and cur[0].split(b"/") < key:
                self._advance()
                cur = self._cur
            if cur is not None and cur[0] != path:
                return None  # new since then
        if cur is not None:  # a match is never asked for again: move on
            i = self._i + 1
            if i < len(self._refs):
                self._i, self._cur = i, self._refs[i]
            else:
                self._advance()
        return cur
