"""A recovery point's entries, written as content-defined metadata chunks."""

from __future__ import annotations

import zstandard

from agents.runtime.engine.chunkers import make_chunker
from agents.runtime.engine.crypto import ChunkerParams
from agents.runtime.engine.format import Entry, encode_chunk, encode_entry
from agents.runtime.engine.packer import Packer
from agents.runtime.engine.repository import Repository

META_CHUNKER = ChunkerParams(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)


class MetadataWriter:
    """Entries in tree order, cut into content-defined metadata chunks (an unchanged tree
    gives the same chunks, so a no-change backup stores almost nothing)."""

    def __init__(self, repo: Repository, packer: Packer):
        self.repo = repo
        self.packer = packer
        self.cdc = make_chunker(
            ChunkerParams(
                META_CHUNKER.min_size,
                META_CHUNKER.avg_size,
                META_CHUNKER.max_size,
                repo.keys.chunker.seed,
            )
        )
        self.cctx = zstandard.ZstdCompressor(level=3)
        self.buf = bytearray()
        self.ids: list[bytes] = []

    def add(self, entry: Entry) -> None:
        self.add_encoded(encode_entry(entry))

    def add_encoded(self, encoded: bytes) -> None:
        self.buf += encoded
        if len(self.buf) >= 4 * META_CHUNKER.max_size:
            self._cut(final=False)

    def _cut(self, *, final: bool) -> None:
        data = bytes(self.buf)
        consumed = 0
        for c in self.cdc.cut_buf(data):
            if not final and c.offset + META_CHUNKER.max_size > len(data):
                break
            piece = data[c.offset : c.offset + c.length]
            cid = self.repo.chunk_id(piece)
            if cid not in self.repo.index:
                self.packer.add(
                    cid, encode_chunk(piece, cid, self.repo.sealer, self.cctx), len(piece)
                )
            self.ids.append(cid)
            consumed = c.offset + c.length
        del self.buf[:consumed]

    def finish(self) -> list[bytes]:
        if self.buf:
            self._cut(final=True)
        return self.ids
