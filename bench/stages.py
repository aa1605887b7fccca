"""Where Haven's initial backup spends CPU: each stage of the worker pipeline timed alone,
single process, over the benchmark data set (``python -m bench.stages DIR``)."""

from __future__ import annotations

import os
import sys
import time

import blake3
import zstandard

from agents.runtime.engine.chunkers import make_chunker
from agents.runtime.engine.crypto import ChunkerParams, Sealer


def main(root: str) -> None:
    cdc = make_chunker(ChunkerParams())
    sealer = Sealer(os.urandom(32))
    key = os.urandom(32)
    z1, z3 = zstandard.ZstdCompressor(level=1), zstandard.ZstdCompressor(level=3)
    t = dict.fromkeys(("read", "chunk", "blake3", "zstd-1", "zstd-3", "aes-gcm"), 0.0)
    size = {"zstd-1": 0, "zstd-3": 0}
    total = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            c0 = time.process_time()
            with open(path, "rb") as f:
                data = f.read()
            c1 = time.process_time()
            chunks = [data[c.offset : c.offset + c.length] for c in cdc.cut_buf(data)]
            c2 = time.process_time()
            for c in chunks:
                blake3.blake3(c, key=key).digest()
            c3 = time.process_time()
            comp1 = [z1.compress(c) for c in chunks]
            c4 = time.process_time()
            comp3 = [z3.compress(c) for c in chunks]
            c5 = time.process_time()
            for c in comp3:
                sealer.seal(c, b"chunk")
            c6 = time.process_time()
            for k, v in zip(t, (c1 - c0, c2 - c1, c3 - c2, c4 - c3, c5 - c4, c6 - c5), strict=True):
                t[k] += v
            size["zstd-1"] += sum(min(len(a), len(b)) for a, b in zip(comp1, chunks, strict=True))
            size["zstd-3"] += sum(min(len(a), len(b)) for a, b in zip(comp3, chunks, strict=True))
            total += len(data)
            files += 1
    print(f"{files} files, {total / 1e9:.2f} GB; CPU seconds per stage (one core):")
    for k, v in t.items():
        print(f"  {k:8} {v:6.2f} s  {total / 1e6 / max(v, 1e-9):7.0f} MB/s")
    for k, v in size.items():
        print(f"  {k} stored {v / 1e6:.0f} MB (ratio {total / v:.2f})")


if __name__ == "__main__":
    main(sys.argv[1])
