"""Build the benchmark data set from installed files nobody here wrote.

Copies regular files (and symlinks, as links) from the Python stdlib, /usr/share/doc, the rest of
/usr/share, static libraries and shared objects under /usr/lib, and a few large binaries into a
scratch folder until the size and file-count targets are reached. ``build_tree`` makes the
many-small-files set instead (``bench/run --files 1000000``): N files cut from slices of those
same installed files, in deep and wide folders. Either result is cached: a ``.complete``
marker with the parameters makes later runs reuse it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

ROOTS = [
    "/usr/lib/python3.11",
    "/usr/lib/python3",
    "/usr/share/doc",
    "/usr/share",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib",
]
LARGE_FILES = [
    "/usr/lib/chromium/chromium",
    "/usr/lib/jvm/temurin-25-jdk-amd64/lib/modules",
    "/usr/lib/jvm/java-17-openjdk-amd64/lib/modules",
    "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1",
    "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
    "/usr/bin/node",
    "/usr/local/bin/terraform",
    "/usr/lib/chromium/resources.pak",
    "/usr/lib/google-cloud-sdk/bin/anthoscli",
    "/usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator/emulator_main",
    "/usr/local/cuda-13.0/nvvm/bin/cicc",
    "/usr/local/cuda-13.0/lib/libnvvm.so.4",
]


def build(target: Path, *, size: int, files: int) -> dict:
    """Fill ``target`` with about ``size`` bytes in about ``files`` files; reuse a complete one."""
    marker = target / ".complete"
    wanted = {"size": size, "files": files, "version": 4}
    if marker.exists() and json.loads(marker.read_text()).get("params") == wanted:
        return json.loads(marker.read_text())
    if target.exists():
        shutil.rmtree(target)
    data = target / "data"
    data.mkdir(parents=True)
    total = count = 0
    # A few large binaries first (up to ~60% of the size), like a real home or server.
    for src in LARGE_FILES:
        if os.path.isfile(src) and total + os.path.getsize(src) < size * 0.62:
            dst = data / "large" / src.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            total += os.path.getsize(src)
            count += 1
    seen: set[tuple[int, int]] = set()
    done = False
    for root in ROOTS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if dirpath.startswith("/usr/lib/chromium"):
                continue
            for name in sorted(filenames):
                src = os.path.join(dirpath, name)
                try:
                    st = os.lstat(src)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                dst = data / src.lstrip("/")
                if dst.exists() or dst.is_symlink():
                    continue
                try:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    if os.path.islink(src):
                        os.symlink(os.readlink(src), dst)
                    elif os.path.isfile(src) and st.st_size < 64 << 20:
                        shutil.copy2(src, dst)
                        total += st.st_size
                    else:
                        continue
                except OSError:
                    continue
                count += 1
                if total >= size or count >= files:
                    done = True
                    break
            if done:
                break
        if done:
            break
    info = {"params": wanted, "bytes": total, "files": count, "path": str(data)}
    marker.write_text(json.dumps(info))
    return info


POOL_BYTES = 96 << 20
TREE_FILES_PER_FOLDER = 40
TREE_FANOUT = 12
TREE_DEEP_EVERY = 50  # one leaf folder in 50 hangs 8 to 14 levels deep


def _content_pool(size: int) -> bytes:
    """``size`` bytes of real content: installed text, code and binaries, in tree order."""
    parts: list[bytes] = []
    total = 0
    for root in (
        "/usr/share/doc",
        "/usr/lib/python3.11",
        "/usr/share/perl",
        "/usr/lib/x86_64-linux-gnu",
    ):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    continue
                try:
                    with open(path, "rb") as f:
                        data = f.read(1 << 20)
                except OSError:
                    continue
                parts.append(data)
                total += len(data)
                if total >= size:
                    return b"".join(parts)[:size]
    return b"".join(parts)


def _leaf_folder(leaf: int, rng: random.Random) -> str:
    """Folder of the ``leaf``-th group of files: base-``TREE_FANOUT`` digits make a wide tree
    4 to 5 levels deep; every ``TREE_DEEP_EVERY``-th one hangs under a deep chain."""
    digits = []
    n = leaf
    while True:
        digits.append(f"d{n % TREE_FANOUT:02d}")
        n //= TREE_FANOUT
        if n == 0:
            break
    parts = digits[::-1]
    if leaf % TREE_DEEP_EVERY == 0:
        parts += [f"deep{i}" for i in range(rng.randint(8, 14))]
    return "/".join(parts)


def build_tree(target: Path, *, files: int, seed: int = 16) -> dict:
    """``files`` small files (median ~1.1 KB, mean ~2 KB, at most 64 KB) cut from slices of installed
    files at random offsets (so they compress like real files and rarely deduplicate), about
    ``TREE_FILES_PER_FOLDER`` to a folder (a few folders hold hundreds), in a tree that is
    both wide and, here and there, 8 to 14 levels deep. Reused while its parameters match."""
    marker = target / ".complete"
    wanted = {"tree_files": files, "seed": seed, "version": 1}
    if marker.exists() and json.loads(marker.read_text()).get("params") == wanted:
        return json.loads(marker.read_text())
    if target.exists():
        shutil.rmtree(target)
    data = target / "data"
    data.mkdir(parents=True)
    pool = _content_pool(POOL_BYTES)
    rng = random.Random(seed)
    total = count = leaf = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    while count < files:
        folder = data / _leaf_folder(leaf, rng)
        folder.mkdir(parents=True, exist_ok=True)
        # most folders hold ~40 files, one in 100 holds 400 to 1,000 (a wide folder)
        here = rng.randint(700, 1000) if leaf % 100 == 37 else rng.randint(10, 70)
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(min(here, files - count)):
                size = min(int(rng.lognormvariate(7.0, 1.1)), 64 << 10)
                off = rng.randrange(0, len(pool) - size)
                fd = os.open(f"f{i:04d}.{('txt', 'py', 'c', 'bin', 'json')[i % 5]}", flags,
                             0o644, dir_fd=dfd)  # fmt: skip
                try:
                    os.write(fd, pool[off : off + size])
                finally:
                    os.close(fd)
                total += size
                count += 1
        finally:
            os.close(dfd)
        leaf += 1
    info = {"params": wanted, "bytes": total, "files": count, "leaf_folders": leaf,
            "path": str(data)}  # fmt: skip
    marker.write_text(json.dumps(info))
    return info


if __name__ == "__main__":
    import sys

    print(build(Path(sys.argv[1]), size=int(float(sys.argv[2])), files=int(sys.argv[3])))
