"""The chunk index's memory per chunk, measured (``python -m bench.index_memory --chunks N``).

Fills a ``ChunkIndex`` with N random chunk ids (as a backup's packs would: 16 MiB packs of
1,000 chunks) and reports, after each step, the structure's own bytes (``memory_bytes``), the
process's resident-memory growth (``/proc/self/statm``: what the machine really pays) and its
peak (``getrusage``: the table's doubling holds the old and new slots at once), the cost of
an insert and of a lookup that misses, and the cache file's size (``cache_size``). The steps
grow one index in one process; 10 M chunks need ~0.7 GB of RAM and minutes of one core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

from agents.runtime.engine.index import ChunkIndex

PAGE = os.sysconf("SC_PAGE_SIZE")
PER_PACK = 1000


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.index_memory")
    ap.add_argument("--chunks", type=int, nargs="+", default=[1_000_000, 10_000_000],
                    help="report at each of these counts (ascending)")  # fmt: skip
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    steps = sorted(args.chunks)
    idx = ChunkIndex()
    before = rss()
    rows = []
    pack_no = -1
    added = 0
    started = time.perf_counter()
    for step in steps:
        fresh = step - added
        t0 = time.perf_counter()
        while added < step:
            if added % PER_PACK == 0:
                pack_no = idx.add_pack(os.urandom(16), 16 << 20)
            idx.add(os.urandom(32), pack_no, (added % PER_PACK) * 16_000, 16_000, 32_000)
            added += 1
        insert_s = time.perf_counter() - t0
        grown = rss() - before  # (before the probe ids below are made)
        probe = [os.urandom(32) for _ in range(100_000)]
        t1 = time.perf_counter()
        for cid in probe:
            idx.pack_of(cid)
        miss_us = (time.perf_counter() - t1) * 10
        del probe
        cache = idx.cache_size()
        row = {
            "chunks": added,
            "structure_bytes": idx.memory_bytes(),
            "structure_bytes_per_chunk": round(idx.memory_bytes() / added, 1),
            "rss_growth_bytes": grown,
            "rss_bytes_per_chunk": round(grown / added, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "insert_us": round(insert_s / max(fresh, 1) * 1e6, 2),
            "lookup_miss_us": round(miss_us, 2),
            "cache_file_bytes": cache,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
