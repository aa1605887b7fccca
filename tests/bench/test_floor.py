"""The benchmark's floor (``bench.floor``) is the engine's pipeline: what it stores is every
file's chunks, cut, identified, compressed and sealed as a backup stores them."""

from __future__ import annotations

import os
import random

from agents.runtime.blobstore.local import LocalDirectoryStore
from agents.runtime.engine.chunkers import make_chunker
from agents.runtime.engine.crypto import ChunkerParams, MasterKeys, Sealer, chunk_hasher
from agents.runtime.engine.format import decode_chunk, parse_pack_header
from agents.runtime.engine.layout import DATA_PREFIX, pack_id_of
from bench.floor import run_floor


def test_the_floor_packs_every_file_as_a_backup_would(tmp_path):
    rng = random.Random(5)
    src = tmp_path / "src"
    contents = []
    for i in range(40):
        folder = src / f"d{i % 4}" / "deeper"
        folder.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(1, 3000)) + b"text " * rng.randint(0, 500)
        (folder / f"f{i}").write_bytes(data)
        contents.append(data)
    big = rng.randbytes(3 << 20)  # more than one content-defined chunk
    (src / "big.bin").write_bytes(big)
    contents.append(big)
    (src / "empty").write_bytes(b"")
    os.symlink("big.bin", src / "link")  # not a regular file: not read
    keys = MasterKeys.generate(ChunkerParams(min_size=64 << 10, avg_size=256 << 10,
                                             max_size=1 << 20))  # fmt: skip

    result = run_floor(str(src), str(tmp_path / "out"), workers=2, keys=keys)

    assert result["files"] == 42 and result["read"] == sum(map(len, contents))
    store, sealer = LocalDirectoryStore(tmp_path / "out"), Sealer(keys.data_key)
    stored = {}
    for blob in store.list(DATA_PREFIX):
        pack = store.get(blob.name)
        for cid, off, length, raw in parse_pack_header(
            pack, sealer, bytes.fromhex(pack_id_of(blob.name))
        ):
            stored[cid] = decode_chunk(pack[off : off + length], cid, sealer, raw)
    assert sum(len(store.get(b.name)) for b in store.list(DATA_PREFIX)) == result["written"]
    chunk_id, cdc, expected = chunk_hasher(keys.id_key), make_chunker(keys.chunker), {}
    for data in contents:
        for c in cdc.cut_buf(data):
            piece = data[c.offset : c.offset + c.length]
            expected[chunk_id(piece)] = piece
    assert len(expected) > 42  # the large file was cut
    assert stored == expected
